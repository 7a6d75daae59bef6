// bfloat16 weights: conversion to and from float32, and y = x @ W^T with W stored as bf16.
//   bf16: the top 16 bits of an IEEE float32 (sign, 8 exponent bits, 7 mantissa bits), so
//   widening is a 16-bit shift and every bf16 is exactly a float32.
//   W: [N, K] uint16 bit patterns, row by row (nn.Linear's layout); x: [M, K] float32;
//   y: [M, N] float32, accumulated in float32.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

struct Bf16ConvertArgs {
  const float* x = nullptr;  // to_bf16: [n] float32 in ...
  uint16_t* bits = nullptr;  //          ... [n] bf16 out
  int64_t n = 0;
};

struct Bf16WidenArgs {
  const uint16_t* bits = nullptr;  // from_bf16: [n] bf16 in ...
  float* out = nullptr;            //            ... [n] float32 out
  int64_t n = 0;
};

struct Bf16MatmulArgs {
  const float* x = nullptr;     // [m, k]
  const uint16_t* w = nullptr;  // [n, k] bf16
  float* y = nullptr;           // [m, n]
  int64_t m = 0, n = 0, k = 0;
};

using Bf16ConvertFn = void (*)(const Bf16ConvertArgs&);
using Bf16WidenFn = void (*)(const Bf16WidenArgs&);
using Bf16MatmulFn = void (*)(const Bf16MatmulArgs&);

struct Bf16Kernels {
  Bf16ConvertFn to_bf16;       // round to nearest even (NaN stays NaN), threads
  Bf16WidenFn from_bf16;       // exact widening, threads
  Bf16MatmulFn matmul_naive;   // version 1: scalar widen-and-dot, one thread
  Bf16MatmulFn matmul_widen;   // version 2: SIMD widen by shifting + FMA, 4 rows of x at a time
  Bf16MatmulFn matmul_tiled;   // version 3: widen W panels to fp32, blocked fp32 matmul
  Bf16MatmulFn matmul_dpbf16;  // version 4: x rounded to bf16, bf16 pair dot products
  Bf16MatmulFn matmul_auto;    // "version 0" = auto: widen for small m (decode), tiled above
  const char* description;
};

}  // namespace kg

KG_DECLARE_PER_ISA(Bf16Kernels, bf16_kernels)

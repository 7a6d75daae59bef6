// A CUDA emulator for the CPU: runs the kernels of csrc/cuda, unchanged, on a machine without
// a GPU, one CUDA thread per fiber, so that their logic can be tested and stepped through.
//
// How the sources get here: CMake copies each csrc/cuda/*.cu to a .cpp in the build tree,
// rewrites `kernel<<<grid, block, shared, stream>>>(args)` into
// `::kg_emu::launch(kernel, grid, block, shared, stream)(args)` and
// `extern __shared__ T name[];` into `T* name = ::kg_emu::dynamic_shared<T>();`, appends
// `::kg_emu::poison_shared(&name, sizeof(name));` to each `__shared__ T name[...];`, and compiles
// it with the host compiler and -DKG_CUDA_EMU, which makes csrc/cuda/common.cuh include this
// header instead of <cuda_runtime.h>. Nothing else in the kernels changes.
//
// The model it implements (csrc/cuda_emu/emu.cpp):
//   - inside a block every thread is a fiber and the fibers of a block run one at a time, each
//     until it reaches a barrier or returns;
//   - __syncthreads() is a barrier for all threads of the block. It is an error (a
//     RuntimeError naming the thread) for a thread to return while others wait at it or to
//     reach it after another thread returned: on a GPU that code hangs or is undefined;
//   - warp shuffles / votes are a barrier of the lanes in `mask`; a lane in the mask that
//     returned or does not exist (a partial warp), a lane outside the mask calling, lanes
//     arriving with different masks, or reading a lane outside the mask are errors;
//   - a pass in which no fiber can run while some wait is a deadlock error;
//   - the order in which fibers run between barriers is "forward", "reverse" or "shuffle"
//     (set_order): code that reads shared memory another thread writes without a barrier in
//     between gets a different answer in one of them, which is how tests catch such races;
//   - shared memory, static and dynamic, is filled with NaN (0xff bytes) at the start of every
//     block, so a kernel that reads what it never wrote gets NaN instead of a lucky value;
//   - launch limits are checked as on a GPU (1024 threads per block, grid y, z <= 65535,
//     48 KiB of dynamic shared memory unless cudaFuncSetAttribute raised it, up to 227 KiB).
//   - WMMA (tensor cores) is modelled at the end of this file: warp-collective, with CUDA's
//     pointer-alignment and ldm rules checked; inline PTX (mma.sync, cp.async) is not.
// Memory is host memory: device pointers are the numpy arrays' addresses; in a KG_SANITIZE
// build AddressSanitizer sees every access (the fiber switches are annotated for it).
// Blocks run on several OS threads at once (set_workers; they are independent on a GPU too),
// so atomics are real (compare-and-swap loops) and their order between blocks varies.
// Not modelled: timing, memory coalescing, bank conflicts, the memory model between blocks,
// the size of static shared memory (a GPU allows 48 KiB of static + default dynamic).
#pragma once
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- vector types and launch geometry ----------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- runtime API subset ------------------------------------------------------------------------
typedef struct kg_emu_stream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* n);

// ---- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// The fibers of a block share one OS thread, and each OS thread runs one block at a time, so a
// function-local thread_local static is one copy per running block.
#define __shared__ static thread_local

namespace kg_emu {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void sync_block();
// All lanes in `mask` deposit `size` bytes and receive the 32 deposits in `all` (lanes
// outside the mask get NaN bytes); returns the mask of lanes that took part.
void exchange(unsigned mask, const void* mine, size_t size, void* all);
unsigned lane_id();
[[noreturn]] void fail(const std::string& what);  // a RuntimeError naming the current thread
void* dynamic_shared_bytes();
// Fills a static __shared__ variable with 0xff bytes (NaN floats) once per block: the first
// thread that reaches its declaration does it (CMake inserts the call after each declaration).
void poison_shared(void* address, size_t bytes);

// Runs `body` once per thread of the grid (see emu.cpp), or records the launch while a
// graph is being captured on this OS thread.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared,
              std::function<void()> body);
void set_max_dynamic_shared(const void* kernel, int bytes);

template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Arguments are converted to the parameter types once, as CUDA copies them to the
    // kernel's parameter space; every thread gets its own copy. The body owns them, so that
    // a launch recorded into a graph (begin_capture) can be replayed later.
    auto params = std::make_shared<std::tuple<std::decay_t<Params>...>>(
        std::forward<Args>(args)...);
    auto fn = kernel;
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, shared, [params, fn]() {
      auto copy = *params;
      std::apply(fn, copy);
    });
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared = 0,
                         cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, grid, block, shared};
}

}  // namespace kg_emu

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize)
    kg_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

#define threadIdx (::kg_emu::thread_idx())
#define blockIdx (::kg_emu::block_idx())
#define blockDim (::kg_emu::block_dim())
#define gridDim (::kg_emu::grid_dim())
#define warpSize 32

inline void __syncthreads() { ::kg_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  char dummy = 0, all[32];
  ::kg_emu::exchange(mask, &dummy, 1, all);
}

// ---- warp shuffles and votes -------------------------------------------------------------------
namespace kg_emu {
template <typename T>
T shuffle_from(unsigned mask, T v, int src_lane) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of a large type");
  T all[32];
  ::kg_emu::exchange(mask, &v, sizeof(T), all);
  if (src_lane < 0 || src_lane > 31 || !(mask >> src_lane & 1u))
    ::kg_emu::fail("a shuffle reads lane " + std::to_string(src_lane) +
                   ", which is not in the mask");
  return all[src_lane];
}
inline void check_width(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)))
    ::kg_emu::fail("shuffle width must be a power of 2 <= 32");
}
}  // namespace kg_emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  kg_emu::check_width(width);
  int lane = (int)kg_emu::lane_id(), base = lane & ~(width - 1);
  return kg_emu::shuffle_from(mask, v, base + (src & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  kg_emu::check_width(width);
  int lane = (int)kg_emu::lane_id(), base = lane & ~(width - 1);
  int src = lane ^ lane_mask;
  if (src < base || src >= base + width) src = lane;
  return kg_emu::shuffle_from(mask, v, src);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  kg_emu::check_width(width);
  int lane = (int)kg_emu::lane_id(), base = lane & ~(width - 1);
  int src = lane + (int)delta;
  if (src >= base + width) src = lane;
  return kg_emu::shuffle_from(mask, v, src);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  kg_emu::check_width(width);
  int lane = (int)kg_emu::lane_id(), base = lane & ~(width - 1);
  int src = lane - (int)delta;
  if (src < base) src = lane;
  return kg_emu::shuffle_from(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  int all[32], mine = pred != 0;
  kg_emu::exchange(mask, &mine, sizeof(int), all);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && all[l]) bits |= 1u << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---- atomics: compare-and-swap loops (blocks run on several OS threads) -------------------------
namespace kg_emu {
template <typename T, typename F>
T atomic_update(T* address, F f) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- or 8-byte values");
  typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
  U* p = reinterpret_cast<U*>(address);
  U seen = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old, updated;
    std::memcpy(&old, &seen, sizeof(T));
    updated = f(old);
    U bits;
    std::memcpy(&bits, &updated, sizeof(T));
    if (__atomic_compare_exchange_n(p, &seen, bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return old;
  }
}
}  // namespace kg_emu
template <typename T>
T atomicAdd(T* address, T value) {
  return kg_emu::atomic_update(address, [value](T old) { return old + value; });
}
template <typename T>
T atomicMax(T* address, T value) {
  return kg_emu::atomic_update(address, [value](T old) { return value > old ? value : old; });
}

// ---- device math that the host library lacks ---------------------------------------------------
using std::isfinite;
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
// CUDA's min / max for mixed integer and floating types.
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  return (C)b < (C)a ? (C)b : (C)a;
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  return (C)a < (C)b ? (C)b : (C)a;
}

// ---- half and bfloat16: storage types with round-to-nearest-even conversions -------------------
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline float __half2float(__half h) {
  uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1fu,
           man = h.bits & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: a normal float
    float f = std::ldexp((float)man, -24);
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t bits = (uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return __nv_bfloat16{(uint16_t)((bits >> 16) | 0x40u)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return __nv_bfloat16{(uint16_t)(bits >> 16)};
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- WMMA (tensor cores), emulated --------------------------------------------------------------
// On a GPU a fragment's elements are spread over the 32 lanes in an unspecified layout; here
// every lane holds the whole tile (num_elements = rows * cols), which code that only touches
// x[i] element by element cannot tell apart. load / store / mma are warp-collective (all 32
// lanes must take part) and check what CUDA requires: ldm a multiple of 16 bytes and the
// pointer 32-byte aligned.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

namespace detail {
inline float as_float(float v) { return v; }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float as_float(__half v) { return __half2float(v); }
template <typename T>
void check_access(const T* p, unsigned ldm, const char* what) {
  if (ldm * sizeof(T) % 16 != 0)
    ::kg_emu::fail(std::string(what) + ": ldm must be a multiple of 16 bytes, got " +
                   std::to_string(ldm) + " elements of " + std::to_string(sizeof(T)) + " bytes");
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::kg_emu::fail(std::string(what) + ": the pointer must be 32-byte aligned");
}
inline bool row_major_layout(row_major*) { return true; }
inline bool row_major_layout(col_major*) { return false; }
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float, void>& f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_access(p, ldm, "wmma::load_matrix_sync");
  __syncwarp();
  bool row = detail::row_major_layout(static_cast<Layout*>(nullptr));
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  __syncwarp();
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p,
                      unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, "wmma::load_matrix_sync");
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  __syncwarp();
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f,
                       unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, "wmma::store_matrix_sync");
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
  __syncwarp();
}
// d = a @ b + c with float accumulation (products of 16-bit inputs are exact in float).
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float, void>& d,
              const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b,
              const fragment<accumulator, M, N, K, float, void>& c) {
  __syncwarp();
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k)
        sum += detail::as_float(a.x[i * K + k]) * detail::as_float(b.x[k * N + j]);
      out[i * N + j] = sum;
    }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}
}  // namespace wmma
}  // namespace nvcuda

# Sourced by the scripts that compile the kernels outside CMake (cross_check.sh, native_check.sh,
# arm64_module.sh): the instruction-set levels of an architecture as "name:flags", the same
# names and flags as CMakeLists.txt's KG_FLAGS_<level>.
#
#   kg_levels x86_64|aarch64     # sets LEVELS
kg_levels() {
    local avx2="-mavx2 -mfma -mf16c -mbmi -mbmi2 -mlzcnt -mpopcnt"
    local avx512="$avx2 -mavx512f -mavx512cd -mavx512bw -mavx512dq -mavx512vl -mprefer-vector-width=512"
    case "$1" in
        x86_64) LEVELS=("generic:" "avx2:$avx2" "avx512:$avx512"
                        "avx512bf16:$avx512 -mavx512vnni -mavx512bf16") ;;
        aarch64) LEVELS=("generic:-march=armv8-a" "dotprod:-march=armv8.2-a+dotprod+fp16"
                         "i8mm:-march=armv8.6-a+dotprod+fp16+i8mm+bf16") ;;
        *) echo "no levels for architecture $1" >&2; return 2 ;;
    esac
}

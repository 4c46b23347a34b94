// AVX-512 instantiation of the sparse microkernels (compiled with -mavx512f/bw/vl/dq).
#include "isa/vec_avx512.h"
#define DC_VEC VecAvx512
#define DC_NAME "avx512"
#define DC_ENTRY kernels_avx512
#include "isa/kernels_impl.h"

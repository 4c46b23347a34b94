// AVX2 + FMA instantiation of the sparse microkernels (compiled with -mavx2 -mfma).
#include "isa/vec_avx2.h"
#define DC_VEC VecAvx2
#define DC_NAME "avx2"
#define DC_ENTRY kernels_avx2
#include "isa/kernels_impl.h"

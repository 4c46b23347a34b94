// AVX-512 instantiation of the depthwise row kernel.
#include "isa/vec_avx512.h"
#define DC_VEC VecAvx512
#define DC_NAME "avx512"
#define DC_ENTRY depthwise_kernels_avx512
#include "isa/depthwise_impl.h"

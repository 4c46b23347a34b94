// AVX2 + FMA instantiation of the depthwise kernels, the channel-interleaved one included
// (compiled with -mavx2 -mfma).
#include "isa/vec_avx2.h"
#define DC_VEC VecAvx2
#define DC_NAME "avx2"
#define DC_ENTRY depthwise_kernels_avx2
#define DC_INTERLEAVED
#include "isa/depthwise_impl.h"

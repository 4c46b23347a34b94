// Portable instantiation of the depthwise row kernel (no ISA flags).
#include "isa/vec_scalar.h"
#define DC_VEC VecScalar
#define DC_NAME "scalar"
#define DC_ENTRY depthwise_kernels_scalar
#include "isa/depthwise_impl.h"

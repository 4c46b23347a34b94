// Portable instantiation of the exp-based activations.
#include "isa/activation_scalar_av.h"

namespace deepcomp {
namespace {
using AV = ScalarAV;
}  // namespace
}  // namespace deepcomp

#define DC_NAME "scalar"
#define DC_ENTRY activation_kernels_scalar
#include "isa/activation_impl.h"

// The weight-transform matrices G of the Winograd forms (csrc/winograd.h), shared by the transform
// at build time (csrc/winograd.cpp, in double) and the per-call one of the streamed form
// (isa/winograd_impl.h, in float). The input and output transforms in isa/winograd_impl.h use the
// same points.
#pragma once

namespace deepcomp {

// G of F(4x4, 3x3): a 3-tap kernel to its 6 transformed taps (points 0, +-1, +-2, infinity).
constexpr double kG3[6][3] = {{1.0 / 4, 0, 0},
                              {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                              {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                              {1.0 / 24, 1.0 / 12, 1.0 / 6},
                              {1.0 / 24, -1.0 / 12, 1.0 / 6},
                              {0, 0, 1}};
// G of F(4x4, 5x5): a 5-tap kernel to its 8 transformed taps (points 0, +-1, +-2, +-1/2, infinity;
// the input transform in isa/winograd_impl.h matches).
constexpr double kG5[8][5] = {{1, 0, 0, 0, 0},
                              {-2.0 / 9, -2.0 / 9, -2.0 / 9, -2.0 / 9, -2.0 / 9},
                              {-2.0 / 9, 2.0 / 9, -2.0 / 9, 2.0 / 9, -2.0 / 9},
                              {1.0 / 90, 1.0 / 45, 2.0 / 45, 4.0 / 45, 8.0 / 45},
                              {1.0 / 90, -1.0 / 45, 2.0 / 45, -4.0 / 45, 8.0 / 45},
                              {32.0 / 45, 16.0 / 45, 8.0 / 45, 4.0 / 45, 2.0 / 45},
                              {32.0 / 45, -16.0 / 45, 8.0 / 45, -4.0 / 45, 2.0 / 45},
                              {0, 0, 0, 0, 1}};

}  // namespace deepcomp

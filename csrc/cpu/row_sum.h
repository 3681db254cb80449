// The sum of a row's float32 terms (a KL, a log density, an nll) on the CPU, with an error
// that does not grow with the row's length.
//
// Added one after another in float32, n terms collect n roundings, each of the size of the
// running total's last bit: at D = 2^20 a row's Gaussian KL came out tens of nats off.
// RowSum keeps kLanes float64 partial sums instead: the i-th value it is given goes to
// lane i % kLanes, and the lanes are added pairwise and rounded to float32 once at the
// end.  A float64 addition rounds 2^29 times finer than a float32 one, so even millions
// of terms per lane leave the result within little more than half an ulp of the exact sum
// of the float32 terms (unless they cancel almost entirely): as close as torch's pairwise
// float32 sum or closer, which each family's tests check at D = 2^20.
//
// The order of the additions depends only on the number of values, never on the thread or
// on the target (AVX2 or baseline clone), so results are bitwise repeatable and
// independent of the thread count.  The lanes are independent chains the compiler turns
// into SIMD adds (a single running total would be one serial chain of adds).
#pragma once

#include <cstdint>

namespace fastvae {
namespace cpu {

class RowSum {
 public:
  // Adds values[0..count).  Lane j takes values j, j + kLanes, ... of this call, so a
  // row's columns keep their lanes across calls when every call but the row's last adds a
  // multiple of kLanes values (the tiles of the loops here).
  void add(const float* values, int64_t count) {
    double lanes[kLanes];
    for (int j = 0; j < kLanes; ++j) lanes[j] = lanes_[j];
    int64_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) lanes[j] += static_cast<double>(values[i + j]);
    }
    for (int j = 0; i < count; ++i, ++j) lanes[j] += static_cast<double>(values[i]);  // the row's last, partial step
    for (int j = 0; j < kLanes; ++j) lanes_[j] = lanes[j];
  }

  // The sum so far, rounded once to float32.
  float total() const {
    const double sum = ((lanes_[0] + lanes_[1]) + (lanes_[2] + lanes_[3])) +
                       ((lanes_[4] + lanes_[5]) + (lanes_[6] + lanes_[7]));
    return static_cast<float>(sum);
  }

 private:
  static constexpr int kLanes = 8;
  double lanes_[kLanes] = {};
};

}  // namespace cpu
}  // namespace fastvae

// rnnkit's fused CPU recurrence: a whole sequence forward, and its whole BPTT backward, for one
// layer and direction of an RNN (tanh, ReLU), LSTM or GRU (reset before / after).
//
// The input projection gx = W_ih x + b_ih of all time steps is one product at the start of the
// forward (in bf16 mode the caller makes gx with autocast's GEMM instead). Per time step:
//   forward : one recurrent GEMM (two for the textbook GRU) + one fused pass over the gates
//   backward: one fused pass over the gate gradients + one GEMM (two for the textbook GRU), the
//             gate gradients also added to each sequence's sums for the biases' gradients
// and after the backward loop dW_hh, dW_ih (large GEMMs over all steps) and dx = dG W_ih.
// bf16 mode (`bf16`, float32 only; torch.autocast("cpu", dtype=torch.bfloat16) turns it on): every
// GEMM of the recurrence takes bf16 operands (W_hh rounded once per call, the state and the gate
// gradients per step), accumulates in fp32 inside oneDNN, and its result is rounded to bf16 then
// widened back; the state h, c, the gate passes and every buffer kept across steps stay float32.
// `counter_dropout` is the dropout between layers (rnnkit/dropout.py): a mask that is a function of
// a key and the element's index, so backward is the same call on the gradient.
// For inference, `step` runs one time step of a cell for a few sequences: both products as dot
// products over contiguous weight rows, then the same gate pass (no autograd, no GEMM dispatch).
// The equations are those of rnnkit/cells/*.py (the reference); see rnnkit/kernels/native.py.
//
// Layouts (contiguous): x (T, B, I), gx (T, B, G*H), gate rows in torch's order (LSTM i,f,g,o;
// GRU r,z,n); h0, c0 (B, H); w_ih (G*H, I); w_hh (G*H, H); biases (G*H) or empty; valid (T, B)
// uint8 or empty.
// Saved for backward, indexed by time t: acts (T, B, G*H) gate activations, hprev (T, B, H) the
// state each step started from, cprev (T, B, H) (LSTM), extra (T, B, H) (GRU: W_hn h + b_hn
// after, r * h before). Where valid[t, b] == 0 the state is held and the output is zero.

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define RNNKIT_X86 1
#endif

// Compiled for AVX-512 (32 registers of 64 bytes), or for narrower vectors (AVX2: 16 of 32
// bytes; NEON): the register tiles' shapes and where oneDNN pays differ (kOneDnnMinMacs,
// kOneDnnTakesPaddedWeights, kVectorBytes).
#if defined(__AVX512F__)
constexpr bool kAvx512 = true;
#else
constexpr bool kAvx512 = false;
#endif

namespace {

enum Kind : int64_t { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU_BEFORE = 3, GRU_AFTER = 4 };

int64_t gate_count(int64_t kind) { return kind == LSTM ? 4 : (kind >= GRU_BEFORE ? 3 : 1); }

// Denormal floats make the arithmetic of long sequences many times slower; flush them to zero
// (FTZ) and treat denormal inputs as zero (DAZ) while the kernel runs, then restore.
struct FlushDenormals {
#ifdef RNNKIT_X86
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Activations. fp64 uses the C library (the test oracle's precision); fp32 uses an exp written
// to vectorise: e^x = 2^k e^r with k = round(x / ln 2) and |r| <= ln(2)/2, e^r by its Taylor
// series to r^7 (relative error below 6e-9, under float rounding).
inline double exp_fn(double x) { return std::exp(x); }
inline float exp_fn(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln 2 split in two (Cody-Waite)
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  return p * std::bit_cast<float>(bits);
}
template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_fn(-x)); }
inline double tanh_fn(double x) { return std::tanh(x); }
inline float tanh_fn(float x) {  // tanh|x| = (1 - e^-2|x|) / (1 + e^-2|x|)
  const float e = exp_fn(-2.0f * std::fabs(x));
  return std::copysign((1.0f - e) / (1.0f + e), x);
}

// sum[j] += row[j]: a straight-line loop the compiler vectorises.
template <typename T>
inline void add_row(T* __restrict sum, const T* __restrict row, int64_t n) {
  for (int64_t j = 0; j < n; ++j) sum[j] += row[j];
}

// One row (one sequence) of each fused gate pass: straight-line loops the compiler vectorises.
template <typename T>
void lstm_row(T* __restrict a, const T* __restrict x, const T* __restrict bias, T* __restrict c, T* __restrict h,
              T* __restrict out, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {  // a = W_hh h (the GEMM), x = W_ih x_t + b_ih (precomputed)
    const T i = sigmoid(a[j] + x[j] + bias[j]), f = sigmoid(a[H + j] + x[H + j] + bias[H + j]);
    const T g = tanh_fn(a[2 * H + j] + x[2 * H + j] + bias[2 * H + j]);
    const T o = sigmoid(a[3 * H + j] + x[3 * H + j] + bias[3 * H + j]);
    a[j] = i, a[H + j] = f, a[2 * H + j] = g, a[3 * H + j] = o;
    const T c_new = f * c[j] + i * g;  // C_t = f ⊙ C_{t-1} + i ⊙ C~_t
    const T h_new = o * tanh_fn(c_new);  // h_t = o ⊙ tanh(C_t)
    c[j] = c_new, h[j] = h_new, out[j] = h_new;
  }
}

template <typename T>
void rnn_row(T* __restrict a, const T* __restrict x, const T* __restrict bias, T* __restrict h, T* __restrict out, int64_t H,
             bool relu) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) a[j] = h[j] = out[j] = std::max(a[j] + x[j] + bias[j], T(0));
  } else {
    for (int64_t j = 0; j < H; ++j) a[j] = h[j] = out[j] = tanh_fn(a[j] + x[j] + bias[j]);
  }
}

template <typename T>
void lstm_grad_row(const T* __restrict a, const T* __restrict cprev, T* __restrict dh, T* __restrict dc,
                   T* __restrict dg, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const T tc = tanh_fn(f * cprev[j] + i * g);  // tanh(C_t), C_t recomputed
    const T dct = dc[j] + dh[j] * o * (T(1) - tc * tc);
    dg[j] = dct * g * i * (T(1) - i);
    dg[H + j] = dct * cprev[j] * f * (T(1) - f);
    dg[2 * H + j] = dct * i * (T(1) - g * g);
    dg[3 * H + j] = dh[j] * tc * o * (T(1) - o);
    dc[j] = dct * f;
  }
}

// The variant is a template argument so that each loop is branch-free and vectorises (with the
// branches inside, the reset-after pass took more time than the step's GEMM on small-ts).
template <typename T, bool kResetAfter, bool kSaveExtra>
void gru_gates_loop(const T* __restrict x, const T* __restrict g, const T* __restrict bias, T* __restrict a,
                    const T* __restrict h, T* __restrict extra, int64_t H) {
  // g = W_hh h (reset after: all three blocks; before: r and z); x = W_ih x_t + b_ih
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid(x[j] + g[j] + bias[j]), z = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
    a[j] = r, a[H + j] = z;
    if constexpr (kResetAfter) {
      const T ghn = g[2 * H + j] + bias[2 * H + j];  // W_hn h + b_hn
      a[2 * H + j] = tanh_fn(x[2 * H + j] + r * ghn);
      if constexpr (kSaveExtra) extra[j] = ghn;
    } else {
      a[2 * H + j] = r * h[j];  // r ⊙ h, the input of the candidate's GEMM
    }
  }
}

template <typename T>
void gru_gates_row(const T* x, const T* g, const T* bias, T* a, const T* h, T* extra, int64_t H, bool reset_after) {
  if (!reset_after) gru_gates_loop<T, false, false>(x, g, bias, a, h, nullptr, H);
  else if (extra) gru_gates_loop<T, true, true>(x, g, bias, a, h, extra, H);
  else gru_gates_loop<T, true, false>(x, g, bias, a, h, nullptr, H);
}

template <typename T>
void gru_update_row(const T* __restrict a, T* __restrict h, T* __restrict out, int64_t H) {
  for (int64_t j = 0; j < H; ++j) out[j] = h[j] = (T(1) - a[H + j]) * h[j] + a[H + j] * a[2 * H + j];  // (1-z) h + z h~
}

template <typename T, bool kResetAfter>
void gru_grad_loop(const T* __restrict a, const T* __restrict hprev, const T* __restrict ghn, const T* __restrict dh,
                   T* __restrict dg, T* __restrict dgh, T* __restrict direct, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = a[j], z = a[H + j], n = a[2 * H + j];
    const T dz = dh[j] * (n - hprev[j]);
    const T dan = dh[j] * z * (T(1) - n * n);
    direct[j] = dh[j] * (T(1) - z);
    dg[H + j] = dz * z * (T(1) - z);
    dg[2 * H + j] = dan;
    if constexpr (kResetAfter) {
      const T dar = dan * ghn[j] * r * (T(1) - r);
      dg[j] = dgh[j] = dar;
      dgh[H + j] = dg[H + j];
      dgh[2 * H + j] = dan * r;
    }
  }
}

template <typename T>
void gru_grad_row(const T* a, const T* hprev, const T* ghn, const T* dh, T* dg, T* dgh, T* direct, int64_t H, bool reset_after) {
  if (reset_after) gru_grad_loop<T, true>(a, hprev, ghn, dh, dg, dgh, direct, H);
  else gru_grad_loop<T, false>(a, hprev, ghn, dh, dg, nullptr, direct, H);
}

// Run fn(b) for every batch row, split across torch's intra-op threads when the step has
// enough work (each thread flushes denormals too: FTZ/DAZ is per thread).
template <typename Fn>
void for_rows(int64_t B, int64_t work_per_row, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t b = begin; b < end; ++b) fn(b);
  });
}

// bf16 <-> float over the rows of 2-D views whose rows are contiguous: float -> bf16 rounds to
// nearest even (as torch does), bf16 -> float is exact. Straight-line loops that vectorise.
inline uint16_t bf16_bits(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
inline float bf16_value(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

template <typename Fn>
void rows_of(const at::Tensor& view, const Fn& fn) {  // fn(row) for every row, threaded when large
  const int64_t R = view.size(0), K = view.size(1);
  at::parallel_for(0, R, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r, K);
  });
}

// Large float32 products go through oneDNN's matmul, the op behind torch's CPU linear fusion
// (mkldnn::_linear_pointwise): on the AMD EPYC (Zen 5) host measured, MKL's sgemm took 224 us
// for a charLM step's product (B=64, K=256, N=1024) and oneDNN 95 us (64x256x256: 48 against
// 36 us; dW_hh of charLM: 17.4 against 13.6 ms); for small products MKL is the faster (B=8,
// K=128, N=512: 14 against 19 us), hence the size threshold. Without the op (a torch built
// without oneDNN), MKL does them all. On an AVX2 host a charLM step's product (16.8M
// multiply-adds) ran faster on the kernel's own tiles, each thread on its own rows with no fork
// and join per step (split_rows): a charLM LSTM training step 151 against 167 ms
// (benchmarks/kernel_ab.py). Since the tiles read the weights packed into panels they win at
// every size measured there, so AVX2 builds give oneDNN no product: training steps, oneDNN ->
// tiles, big LSTM 422 -> 360 ms, big GRU 311 -> 244 ms, (B, T, I, H) = (128, 50, 128, 512) 449 ->
// 392 ms, (64, 30, 128, 1024) 549 -> 464 ms, (4, 30, 128, 2048) 611 -> 425 ms, (8, 30, 128, 2048)
// 704 -> 688 ms (2026-12-07).
constexpr int64_t kOneDnnMinMacs = kAvx512 ? int64_t(1) << 21 : std::numeric_limits<int64_t>::max();

// Whether products of B rows by a (K, N) matrix, all of one dtype, run on the kernel's register
// tiles (below oneDNN's threshold) rather than oneDNN or MKL; never in bf16 mode.
inline bool on_tiles(int64_t B, int64_t K, int64_t N, bool bf16) { return !bf16 && B * K * N < kOneDnnMinMacs; }

const c10::OperatorHandle* onednn_linear() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return op ? &*op : nullptr;
}

// A weight whose rows are padded (a slice of a wider matrix: the GRU's update and reset columns
// of W_hh^T) has no AVX2 kernel in oneDNN: it fell to its reference inner product, 50 ms for a
// 64x128x256 product that MKL does in 0.1 ms. Such weights go to MKL there.
constexpr bool kOneDnnTakesPaddedWeights = kAvx512;

// out = a b through oneDNN (out[i, n] = sum_k a[i, k] b[k, n], b's transpose as the linear's
// weight); false if it does not apply.
inline bool onednn_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const bool dense = (b.stride(1) == 1 && b.stride(0) == b.size(1)) || (b.stride(0) == 1 && b.stride(1) == b.size(0));
  if (out.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat ||
      a.size(0) * a.size(1) * b.size(1) < kOneDnnMinMacs || onednn_linear() == nullptr ||
      !(dense || kOneDnnTakesPaddedWeights)) {
    return false;
  }
  std::vector<c10::IValue> stack{a, b.t(), c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                                 std::string("")};
  onednn_linear()->callBoxed(&stack);
  out.copy_(stack[0].toTensor());
  return true;
}

// Register tiles of our own for the per-step products of small models (0.1-0.5 M multiply-adds:
// small-ts, long-seq), where MKL packed the whole of b on every call (on long-seq, 13% of a
// training step went to its packing routine and 30% to its kernel) and its call cost more than
// the arithmetic, and for the input projection and its input gradient at every size, which write
// straight into the kernel's pooled buffers (see BufferPool).
// out (M, N) = a (M, K) b (K, N) (+ bias (N)), rows contiguous, leading dimensions lda, ldb, ldo.
// A tile of ROWS x kTileCols accumulators stays in registers while k runs; each row of b is read
// once per tile, straight from the cache, never copied. Blocks of 64 rows by one tile's columns
// are split across threads when the product is large enough.
// The tiles' shapes follow the register file. A tile of R rows by V vectors holds R*V
// accumulators, V vectors of b's row and a broadcast of a, and needs at least 8 accumulators to
// hide the multiply-add latency (4 cycles, 2 a cycle).
// - AVX-512: 32 registers of 64 bytes. Tiles of 8 rows by 2 vectors (16 accumulators); a
//   task's 4 leftover rows take 4 vectors at once (16).
// - AVX2 (and NEON): 16 registers of 32 bytes (NEON: 32 of 16). Tiles of 6 rows by 2 vectors
//   (12 + 2 + 1 = 15 registers); 4 leftover rows by 2 vectors (8 + 2 + 1). The AVX-512 shapes
//   there needed 32 accumulators in 16 registers: GCC kept them on the stack, a load and a store
//   per multiply-add. Leftover rows 2 at a time by 4 vectors read b twice for a thread's 4 rows
//   of long-seq: its training step took 6-7% longer (28.5 against 26.8 ms, kernel_ab.py).
constexpr int64_t kVectorBytes = kAvx512 ? 64 : 32, kTileRows = kAvx512 ? 8 : 6, kLeftoverRows = 4,
                  kLeftoverVectors = kAvx512 ? 4 : 2;
constexpr int64_t kTileBytes = 2 * kVectorBytes;  // a tile's row: two vectors (kLeftoverVectors for leftover rows)
constexpr int64_t kSumChunk = 512;                // rows of a long sum over k taken at a time (see product_task)

// Vectors of kVectorBytes of float or double (GCC/Clang vector types: AVX-512, AVX2 or NEON
// alike), and the same for loads and stores at any element-aligned address. Spelled out per
// type: GCC ignores vector attributes on a template's dependent type.
template <typename T>
struct Vector;
template <>
struct Vector<float> {
  using type = float __attribute__((vector_size(kVectorBytes)));
  using unaligned = float __attribute__((vector_size(kVectorBytes), aligned(4)));
};
template <>
struct Vector<double> {
  using type = double __attribute__((vector_size(kVectorBytes)));
  using unaligned = double __attribute__((vector_size(kVectorBytes), aligned(8)));
};

template <typename T, int64_t ROWS, int64_t COLS>
void product_tile_last_columns(T* __restrict out, int64_t ldo, const T* __restrict a, int64_t lda, int64_t a_step,
                               const T* __restrict b, int64_t ldb, int64_t K, int64_t cols, const T* __restrict bias,
                               bool accumulate);

template <typename T, int64_t ROWS, int64_t COLS>
void product_tile(T* __restrict out, int64_t ldo, const T* __restrict a, int64_t lda, int64_t a_step,
                  const T* __restrict b, int64_t ldb, int64_t K, int64_t cols, const T* __restrict bias, bool accumulate) {
  // a[i * lda + k * a_step]: a's rows (a_step 1), or its columns (lda 1: out = a^T b, see
  // transposed_tile_products); either way one broadcast per row and k
  using Vec = typename Vector<T>::type;
  using VecUnaligned = typename Vector<T>::unaligned;
  constexpr int64_t kLanes = kVectorBytes / sizeof(T), kVecs = COLS / kLanes;
  static_assert(COLS % kLanes == 0, "a tile's row is whole vectors");
  if (cols != COLS) {
    product_tile_last_columns<T, ROWS, COLS>(out, ldo, a, lda, a_step, b, ldb, K, cols, bias, accumulate);
    return;
  }
  // b's row is loaded into registers once per k and used by every row of the tile (written as
  // plain arrays, GCC reloaded it from memory for each row: a load per multiply-add). The
  // accumulators are zeroed one by one: `= {}` became a call to memset on every tile (3% of a
  // charLM forward on AVX2).
  Vec acc[ROWS][kVecs];
  for (int64_t i = 0; i < ROWS; ++i)
    for (int64_t v = 0; v < kVecs; ++v) acc[i][v] = Vec{};
  for (int64_t k = 0; k < K; ++k) {
    Vec bk[kVecs];
    for (int64_t v = 0; v < kVecs; ++v) {
      bk[v] = *reinterpret_cast<const VecUnaligned*>(b + k * ldb + v * kLanes);
#ifdef RNNKIT_X86
      // pinned to a register: else GCC folds the load into each multiply-add as a memory
      // operand (tiles of 4 rows: 20 loads for 16 multiply-adds, and the loads were the limit)
      asm("" : "+v"(bk[v]));
#endif
    }
    for (int64_t i = 0; i < ROWS; ++i) {
      const T av = a[i * lda + k * a_step];
      for (int64_t v = 0; v < kVecs; ++v) acc[i][v] += bk[v] * av;
    }
  }
  for (int64_t i = 0; i < ROWS; ++i) {
    for (int64_t v = 0; v < kVecs; ++v) {
      Vec r = acc[i][v];
      VecUnaligned* o = reinterpret_cast<VecUnaligned*>(out + i * ldo + v * kLanes);
      if (bias) r += *reinterpret_cast<const VecUnaligned*>(bias + v * kLanes);
      if (accumulate) r += *o;
      *o = r;
    }
  }
}

// A tile's last columns, cols < COLS (an input gradient dx of 8 features, N = I): up to half the
// width, a tile of half as many vectors; else b's rows copied kPanelRows at a time into a panel
// padded with zeros to whole vectors, the whole-vector tile run on it into a scratch tile, and its
// first cols columns written out. (A loop over cols with its sums in memory, a store and a load
// at every multiply-add, had taken 10% of the CPU samples of a small-ts training step on AVX2,
// where dx has 8 columns and a tile 16: the step is 3% faster without it, kernel_ab.py.)
template <typename T, int64_t ROWS, int64_t COLS>
void product_tile_last_columns(T* __restrict out, int64_t ldo, const T* __restrict a, int64_t lda, int64_t a_step,
                               const T* __restrict b, int64_t ldb, int64_t K, int64_t cols, const T* __restrict bias,
                               bool accumulate) {
  constexpr int64_t kLanes = kVectorBytes / sizeof(T), kPanelRows = 64;
  if constexpr (COLS > kLanes) {
    if (cols <= COLS / 2) {
      product_tile<T, ROWS, COLS / 2>(out, ldo, a, lda, a_step, b, ldb, K, cols, bias, accumulate);
      return;
    }
  }
  alignas(64) T panel[kPanelRows * COLS] = {};  // columns from cols on stay zero
  alignas(64) T tile[ROWS * COLS] = {};  // stays zero if K is
  for (int64_t k0 = 0; k0 < K; k0 += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, K - k0);
    for (int64_t k = 0; k < rows; ++k) std::copy(b + (k0 + k) * ldb, b + (k0 + k) * ldb + cols, panel + k * COLS);
    product_tile<T, ROWS, COLS>(tile, COLS, a + k0 * a_step, lda, a_step, panel, COLS, rows, COLS, nullptr, k0 > 0);
  }
  for (int64_t i = 0; i < ROWS; ++i)
    for (int64_t j = 0; j < cols; ++j)
      out[i * ldo + j] = (bias ? tile[i * COLS + j] + bias[j] : tile[i * COLS + j]) + (accumulate ? out[i * ldo + j] : T(0));
}

// A task: rows [m0, m1) by the columns [n0, n0 + width) (width <= kPanelCols); b points at column n0
// of b's rows, ldb apart (a panel's, or a row-major matrix's), bias at column 0. Tiles of
// kTileRows rows by kCols columns; then leftover rows, kLeftoverRows at a time, in tiles of
// kLeftoverVectors vectors (a thread's share of a small batch: 4 rows of 8 on long-seq), so a
// tile keeps enough accumulators to hide the multiply-add latency; then a pair of rows and a
// single row, the full width at once (32 rows a thread: five tiles of 6 rows and a pair on
// AVX2). k runs in chunks of kChunk, each chunk over all the task's tiles, so that a long sum (a
// weight gradient's over T*B rows) reads its chunk of a and b from L2 rather than memory; the
// later chunks add to out (the bias comes with the first).
template <typename T>
void product_task(T* out, int64_t ldo, const T* a, int64_t lda, int64_t a_step, const T* b, int64_t ldb, int64_t K,
                  int64_t m0, int64_t m1, int64_t n0, int64_t width, const T* bias, bool accumulate = false) {
  constexpr int64_t kCols = kTileBytes / sizeof(T), kChunk = kSumChunk;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k_len = std::min(kChunk, K - k0);
    const T* ak = a + k0 * a_step;
    const T* bk = b + k0 * ldb;
    const T* bias_k = k0 == 0 ? bias : nullptr;
    const bool more = accumulate || k0 > 0;
    int64_t m = m0;
    for (; m + kTileRows <= m1; m += kTileRows) {
      for (int64_t n = n0; n < n0 + width; n += kCols) {
        product_tile<T, kTileRows, kCols>(out + m * ldo + n, ldo, ak + m * lda, lda, a_step, bk + (n - n0), ldb, k_len,
                                          std::min(kCols, n0 + width - n), bias_k ? bias_k + n : nullptr, more);
      }
    }
    const T* bias_n = bias_k ? bias_k + n0 : nullptr;
    constexpr int64_t kLeftoverCols = kLeftoverVectors * kVectorBytes / sizeof(T);
    for (; m + kLeftoverRows <= m1; m += kLeftoverRows) {
      for (int64_t n = n0; n < n0 + width; n += kLeftoverCols) {
        product_tile<T, kLeftoverRows, kLeftoverCols>(out + m * ldo + n, ldo, ak + m * lda, lda, a_step, bk + (n - n0), ldb,
                                                      k_len,
                                                      std::min(kLeftoverCols, n0 + width - n),
                                                      bias_k ? bias_k + n : nullptr, more);
      }
    }
    if (m + 2 <= m1) {  // a pair of rows: 8 accumulators where two single rows had 4 each
      product_tile<T, 2, 2 * kCols>(out + m * ldo + n0, ldo, ak + m * lda, lda, a_step, bk, ldb, k_len, width, bias_n,
                                    more);
      m += 2;
    }
    for (; m < m1; ++m)
      product_tile<T, 1, 2 * kCols>(out + m * ldo + n0, ldo, ak + m * lda, lda, a_step, bk, ldb, k_len, width, bias_n,
                                    more);
  }
}

// A task's columns (two tiles' width), and a panel's (see TileOperand).
template <typename T>
constexpr int64_t kPanelCols = 2 * kTileBytes / sizeof(T);

// The right operand b (K, N) of a tile product: element (k, n) at
//   data[n / kPanelCols * panel + k * ld + n % kPanelCols].
// A row-major matrix is the case panel = kPanelCols (ld: its row stride). Packed (`pack_panels`),
// b is cut into panels of kPanelCols columns, each its K rows of kPanelCols contiguous elements
// (ld = kPanelCols, panel = K * kPanelCols), so that a tile reads its rows of b one after the
// other. The weights go in packed: W_hh^T and W_hh for every step's product, W_ih^T for the input
// projection, W_ih for dx. Row-major, a charLM LSTM's W_hh^T has rows 4 KiB apart (1024 floats),
// and a tile's 256 rows of it all fall in one set of the 8-way L1 (and in 16 of L2's 1024 sets):
// they did not stay in cache for the next tile of rows, each of which read them again from L3.
// Packed, on the AVX2 host (benchmarks/kernel_ab.py, training steps): charLM 102.4 -> 94.3 ms,
// long-seq 24.1 -> 21.1 ms; small-ts and big (oneDNN) unchanged.
template <typename T>
struct TileOperand {
  const T* data;
  int64_t ld, panel;
  const T* column(int64_t n0) const { return data + n0 / kPanelCols<T> * panel + n0 % kPanelCols<T>; }  // (0, n0)
};

template <typename T>
TileOperand<T> row_major(const T* b, int64_t ldb) {
  return {b, ldb, kPanelCols<T>};
}

// b (K, N), any strides, as panels (see TileOperand): (ceil(N / kPanelCols), K, kPanelCols),
// contiguous. Made once per call of the kernel for a weight that every time step multiplies; a
// plain loop in the order that reads b contiguously (a copy_ per panel cost 2% of a small-ts step).
inline at::Tensor pack_panels(const at::Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1), s0 = b.stride(0), s1 = b.stride(1);
  at::Tensor panels;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "rnnkit_pack_panels", [&] {
    constexpr int64_t kWide = kPanelCols<scalar_t>;
    panels = at::zeros({(N + kWide - 1) / kWide, K, kWide}, b.options());
    const scalar_t* src = b.data_ptr<scalar_t>();
    scalar_t* dst = panels.data_ptr<scalar_t>();
    for (int64_t p = 0; p < panels.size(0); ++p) {
      const int64_t n0 = p * kWide, width = std::min(kWide, N - n0);
      const scalar_t* from = src + n0 * s1;
      scalar_t* panel = dst + p * K * kWide;
      if (s1 <= s0) {  // rows contiguous (W_hh): along each row
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < width; ++j) panel[k * kWide + j] = from[k * s0 + j * s1];
      } else {  // columns contiguous (W_hh^T, a view): down each column
        for (int64_t j = 0; j < width; ++j)
          for (int64_t k = 0; k < K; ++k) panel[k * kWide + j] = from[k * s0 + j * s1];
      }
    }
  });
  return panels;
}

template <typename T>
TileOperand<T> panels_operand(const at::Tensor& panels) {
  return {panels.data_ptr<T>(), panels.size(2), panels.size(1) * panels.size(2)};
}

// out (M, N) = a (M, K) b (K, N) (+ bias), a[i, k] at a[i * lda + k * a_step].
template <typename T>
void tile_product(T* out, int64_t ldo, const T* a, int64_t lda, int64_t a_step, TileOperand<T> b, int64_t M, int64_t K,
                  int64_t N, const T* bias = nullptr) {
  constexpr int64_t kWide = kPanelCols<T>, kBlockRows = 64;
  const int64_t col_tiles = (N + kWide - 1) / kWide, row_blocks = (M + kBlockRows - 1) / kBlockRows;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, std::min(M, kBlockRows) * K * kWide));
  at::parallel_for(0, row_blocks * col_tiles, grain, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t task = begin; task < end; ++task) {  // row-block-major: a block's rows of a stay in cache
      const int64_t n0 = task % col_tiles * kWide, m0 = task / col_tiles * kBlockRows;
      product_task<T>(out, ldo, a, lda, a_step, b.column(n0), b.ld, K, m0, std::min(M, m0 + kBlockRows), n0,
                      std::min(kWide, N - n0), bias);
    }
  });
}

template <typename T>
void tile_product(T* out, int64_t ldo, const T* a, int64_t lda, TileOperand<T> b, int64_t M, int64_t K, int64_t N,
                  const T* bias = nullptr) {
  tile_product<T>(out, ldo, a, lda, 1, b, M, K, N, bias);
}

// out (M, N) = a (M, K) b (+ bias) by tile_product, any size; b is (K, N) or its panels
// (pack_panels); rows contiguous, one dtype.
inline void tile_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {}) {
  TORCH_CHECK(a.stride(1) == 1 && b.stride(-1) == 1 && out.stride(1) == 1, "rnnkit: tile_product needs contiguous rows");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_tile_product", [&] {
    const TileOperand<scalar_t> operand =
        b.dim() == 3 ? panels_operand<scalar_t>(b) : row_major(b.data_ptr<scalar_t>(), b.stride(0));
    tile_product<scalar_t>(out.data_ptr<scalar_t>(), out.stride(0), a.data_ptr<scalar_t>(), a.stride(0), operand, a.size(0),
                           a.size(1), out.size(1), bias.defined() && bias.numel() ? bias.data_ptr<scalar_t>() : nullptr);
  });
}

// outs[j] (M, N_j) = d^T s_j for d (S, M) and each s_j (S, N_j), rows contiguous (weight
// gradients: sums over all S = T*B rows), by the tiles reading d by columns: no transposed copy.
// Threads take blocks of 64 rows of out (64 columns of d); each runs over S in chunks of 512 rows
// and does every product's tiles for a chunk while that chunk of d is in L2, so d is read once for
// all the products (on long-seq, dW_hh's two column tiles and dW_ih's had read the 8 MB of gate
// gradients three times: a training step took 3.5% longer). A product with fewer columns than a
// tile (an input of 8 features) is computed as its transpose, out^T = s^T d, and copied across.
inline void transposed_tile_products(const std::vector<at::Tensor>& outs, const at::Tensor& d,
                                     const std::vector<at::Tensor>& ss) {
  TORCH_CHECK(d.stride(1) == 1, "rnnkit: transposed_tile_products needs contiguous rows");
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "rnnkit_transposed_tile_products", [&] {
    constexpr int64_t kCols = kTileBytes / sizeof(scalar_t), kWide = kPanelCols<scalar_t>, kBlockRows = 64, kChunk = kSumChunk;
    const int64_t S = d.size(0), M = d.size(1);
    if (S == 0) {  // an empty sequence: no term to sum
      for (const at::Tensor& out : outs) out.zero_();
      return;
    }
    const scalar_t* dp = d.data_ptr<scalar_t>();
    std::vector<size_t> direct;
    for (size_t j = 0; j < outs.size(); ++j) {
      const at::Tensor &out = outs[j], &s = ss[j];
      TORCH_CHECK(s.stride(1) == 1 && out.stride(1) == 1, "rnnkit: transposed_tile_products needs contiguous rows");
      if (s.size(1) >= kCols || s.size(1) >= M) {
        direct.push_back(j);
        continue;
      }
      const int64_t N = s.size(1);
      at::Tensor out_t = at::empty({N, M}, out.options());
      tile_product<scalar_t>(out_t.data_ptr<scalar_t>(), M, s.data_ptr<scalar_t>(), 1, s.stride(0), row_major(dp, d.stride(0)),
                             N, S, M);
      out.copy_(out_t.t());
    }
    if (direct.empty()) return;
    at::parallel_for(0, (M + kBlockRows - 1) / kBlockRows, 1, [&](int64_t begin, int64_t end) {
      FlushDenormals flush;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t m0 = block * kBlockRows, m1 = std::min(M, m0 + kBlockRows);
        for (int64_t k0 = 0; k0 < S; k0 += kChunk) {
          const int64_t k_len = std::min(kChunk, S - k0);
          for (size_t j : direct) {
            const at::Tensor &out = outs[j], &s = ss[j];
            const int64_t N = s.size(1);
            for (int64_t n0 = 0; n0 < N; n0 += kWide) {
              product_task<scalar_t>(out.data_ptr<scalar_t>(), out.stride(0), dp + k0 * d.stride(0), 1, d.stride(0),
                                     s.data_ptr<scalar_t>() + k0 * s.stride(0) + n0, s.stride(0), k_len, m0, m1, n0,
                                     std::min(kWide, N - n0), nullptr, k0 > 0);
            }
          }
        }
      }
    });
  });
}

// out = a b by tile_product for a small product; false if it does not apply (a large product,
// or rows not contiguous).
inline bool small_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!on_tiles(a.size(0), a.size(1), b.size(1), false) || out.scalar_type() != b.scalar_type() ||
      a.scalar_type() != b.scalar_type() || a.stride(1) != 1 || b.stride(1) != 1 || out.stride(1) != 1) {
    return false;
  }
  tile_product(out, a, b);
  return true;
}

// out = a b in the operands' own precision: our tiles for small products, oneDNN for large
// float32 ones, else MKL.
inline void same_precision_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!small_product(out, a, b) && !onednn_product(out, a, b)) at::mm_out(out, a, b);
}

// out = a b. If b is bf16 (bf16 mode) and out is float: a is rounded to bf16 into scratch_in,
// the GEMM writes bf16 into scratch_out, which is widened into out. Otherwise one GEMM into out.
inline void product(at::Tensor out, const at::Tensor& a, const at::Tensor& b, at::Tensor& scratch_in, at::Tensor& scratch_out) {
  if (b.scalar_type() == out.scalar_type()) {
    same_precision_product(out, a, b);
    return;
  }
  TORCH_CHECK(a.stride(1) == 1 && out.stride(1) == 1, "rnnkit: bf16 product needs row-major operands");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (scratch_in.numel() < M * K) scratch_in = at::empty({M * K}, b.options());
  if (scratch_out.numel() < M * N) scratch_out = at::empty({M * N}, b.options());
  at::Tensor a16 = scratch_in.narrow(0, 0, M * K).view({M, K}), out16 = scratch_out.narrow(0, 0, M * N).view({M, N});
  const float* ap = a.data_ptr<float>();
  uint16_t* a16p = reinterpret_cast<uint16_t*>(a16.data_ptr<at::BFloat16>());
  rows_of(a, [&](int64_t r, int64_t n) {
    const float* __restrict src = ap + r * a.stride(0);
    uint16_t* __restrict dst = a16p + r * n;
    for (int64_t k = 0; k < n; ++k) dst[k] = bf16_bits(src[k]);
  });
  at::mm_out(out16, a16, b);
  const uint16_t* o16p = reinterpret_cast<const uint16_t*>(out16.data_ptr<at::BFloat16>());
  float* op = out.data_ptr<float>();
  rows_of(out, [&](int64_t r, int64_t n) {
    const uint16_t* __restrict src = o16p + r * n;
    float* __restrict dst = op + r * out.stride(0);
    for (int64_t k = 0; k < n; ++k) dst[k] = bf16_value(src[k]);
  });
}

// The same for a one-off product (no scratch kept): the weight gradients' GEMM after the loop.
inline void product(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (b.scalar_type() == out.scalar_type()) {
    same_precision_product(out, a, b);
  } else {
    out.copy_(at::mm(a.to(b.scalar_type()), b));
  }
}

// The GEMM operand form of a weight: as it is, or rounded to bf16 in bf16 mode.
inline at::Tensor operand(const at::Tensor& w, bool bf16) { return bf16 ? w.to(at::kBFloat16) : w; }

// Large buffers (the saved activations, the gate gradients, the outputs) live past a call, until
// backward or the optimizer step, and are then freed. Allocated afresh, each one comes as new
// pages from the OS and costs a page fault per 4 KiB on first touch: measured on a charLM step
// (B=64, T=100, H=256), the kernel's time in page faults was about a fifth of the step. The pool
// keeps the last few large buffers and hands one out again once nothing else refers to its storage
// (as cuDNN's RNN keeps a workspace). Holding a buffer is holding memory that would otherwise
// have been freed: at most kPoolSize buffers, the oldest unused ones dropped first.
class BufferPool {
 public:
  // A new tensor (its own TensorImpl, not a view: callers may modify it in place, and autograd
  // keeps no history on the pool's side) over a kept storage of the right size, or a fresh one.
  at::Tensor take(at::IntArrayRef shape, const at::TensorOptions& opts) {
    const size_t bytes = static_cast<size_t>(c10::multiply_integers(shape)) * opts.dtype().itemsize();
    if (bytes < kMinBytes) return at::empty(shape, opts);
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = std::find_if(storages_.begin(), storages_.end(),
                              [&](const c10::Storage& st) { return unused(st) && st.nbytes() == bytes; });
    c10::Storage storage;
    if (found != storages_.end()) {
      storage = *found;
      storages_.erase(found);
    } else {
      storage = at::empty({static_cast<int64_t>(bytes)}, opts.dtype(at::kByte)).storage();
    }
    storages_.push_back(storage);  // most recently used last
    while (storages_.size() > kPoolSize) {  // forget the oldest unused storage, else the oldest
      auto victim = std::find_if(storages_.begin(), storages_.end(), unused);
      storages_.erase(victim == storages_.end() ? storages_.begin() : victim);
    }
    return at::empty({0}, opts).set_(storage, 0, shape);
  }

 private:
  static bool unused(const c10::Storage& st) { return st.use_count() == 1; }
  static constexpr size_t kMinBytes = 1 << 20;
  static constexpr size_t kPoolSize = 16;
  std::mutex mutex_;
  std::vector<c10::Storage> storages_;
};

at::Tensor take(at::IntArrayRef shape, const at::TensorOptions& opts) {
  static BufferPool pool;
  return pool.take(shape, opts);
}

// m (R, C), rows contiguous -> a contiguous (C, R) copy from the pool, float32, by 32 x 32 blocks
// that stay in L1. torch's m.t().contiguous() took 7.8 ms for a charLM step's gate gradients
// (6400 x 1024) on the host measured, into fresh pages; oneDNN's linear makes that copy itself when
// given a transposed operand.
at::Tensor transposed(const at::Tensor& m) {
  const int64_t R = m.size(0), C = m.size(1), ld = m.stride(0);
  at::Tensor out = take({C, R}, m.options());
  const float* __restrict src = m.data_ptr<float>();
  float* __restrict dst = out.data_ptr<float>();
  constexpr int64_t kBlock = 32;
  at::parallel_for(0, (R + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin * kBlock; r0 < std::min(R, end * kBlock); r0 += kBlock) {
      const int64_t r1 = std::min(R, r0 + kBlock);
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t c1 = std::min(C, c0 + kBlock);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = src[r * ld + c];
      }
    }
  });
  return out;
}

// Weight gradients sum over all S = T*B rows: out (M, N) = d^T s for d (S, M) and s (S, N), both
// with contiguous rows. Up to kTileWeightMaxMacs multiply-adds our tiles read d by columns
// (transposed_tile_products); measured on the Zen 5 host, 2 threads, against the transposed copies
// plus oneDNN below: small-ts dW_hh (S=1536, M=256, N=64) 102 against 175 us, its dW_ih (N=8) 17
// against 103 us, long-seq dW_hh (4000, 512, 128) 1.08 against 1.53 ms, charLM dW_ih (6400, 1024,
// 64) 2.3 against 4.7 ms; at charLM's dW_hh (6400, 1024, 256: 1.7 G) 10.9 against 10.2 ms, and
// big's (6400, 2048, 512) 44 against 33 ms, so larger products keep oneDNN. S is neither
// operand's contiguous dimension there, and oneDNN's linear wants it contiguous in both: both
// operands go through `transposed`, a chunk of rows at a time (the copies stay near 16 MiB, so a
// step's peak memory stays below nn.LSTM's), a d shared by several products once a chunk; the
// chunks' products are summed. bf16 mode takes MKL's transposed GEMM, which rounds the operands
// (s is bf16 there), and so does any other product.
// On the AVX2 host none of this held (weight_gradients alone, 2 threads, float32): MKL's
// transposed GEMM (mm on d^T, no copies) ran at 40-76 G multiply-adds a second where the tiles
// ran at 26-45 and the transposed copies plus oneDNN at 38-46 (long-seq dW_hh 64 against 36,
// charLM's 76 against 38, big's 73 against 46; small-ts dW_hh 40 against 32). There every weight
// gradient takes MKL, but for those narrower than a tile (small-ts dW_ih, N=8: tiles 32, MKL 5).
constexpr int64_t kTileWeightMaxMacs = int64_t(1) << 30;
constexpr bool kWeightGradientsOnMkl = !kAvx512;

struct WeightGradient {
  at::Tensor out, d, s;
};

void weight_gradients(const std::vector<WeightGradient>& jobs, bool bf16) {
  std::vector<const WeightGradient*> large, tiled;
  int64_t widest = 1;
  for (const auto& job : jobs) {
    const bool one_dtype = job.d.scalar_type() == job.out.scalar_type() && job.s.scalar_type() == job.out.scalar_type();
    const int64_t macs = job.d.size(0) * job.d.size(1) * job.s.size(1);
    if (kWeightGradientsOnMkl && !bf16 && one_dtype) {
      at::Tensor out = job.out;
      if (job.s.size(1) < kTileBytes / int64_t(out.element_size())) tiled.push_back(&job);
      else at::mm_out(out, job.d.t(), job.s);
    } else if (!bf16 && one_dtype && macs < kTileWeightMaxMacs) {
      tiled.push_back(&job);
    } else if (!bf16 && job.d.scalar_type() == at::kFloat && job.s.scalar_type() == at::kFloat && onednn_linear() != nullptr &&
        macs >= kOneDnnMinMacs) {
      large.push_back(&job);
      widest = std::max({widest, job.d.size(1), job.s.size(1)});
    } else {
      product(job.out, job.d.t(), job.s);
    }
  }
  const auto same = [](const at::Tensor& a, const at::Tensor& b) { return a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes(); };
  while (!tiled.empty()) {  // the products of one d together
    const at::Tensor d = tiled[0]->d;
    std::vector<at::Tensor> outs, ss;
    for (auto it = tiled.begin(); it != tiled.end();) {
      if (same((*it)->d, d)) {
        outs.push_back((*it)->out), ss.push_back((*it)->s);
        it = tiled.erase(it);
      } else {
        ++it;
      }
    }
    transposed_tile_products(outs, d, ss);
  }
  if (large.empty()) return;
  const int64_t S = large[0]->d.size(0), chunk = std::max<int64_t>(256, (int64_t(1) << 22) / widest);
  for (int64_t r0 = 0; r0 < S; r0 += chunk) {
    const int64_t rows = std::min(chunk, S - r0);
    std::vector<std::pair<const WeightGradient*, at::Tensor>> d_t;  // each distinct d, transposed
    for (const WeightGradient* job : large) {
      const at::Tensor d = job->d.narrow(0, r0, rows), s = job->s.narrow(0, r0, rows);
      auto same_d = std::find_if(d_t.begin(), d_t.end(), [&](const auto& seen) {
        return seen.first->d.data_ptr() == job->d.data_ptr() && seen.first->d.sizes() == job->d.sizes();
      });
      if (same_d == d_t.end()) same_d = d_t.insert(d_t.end(), {job, transposed(d)});
      at::Tensor part = r0 == 0 ? job->out : at::empty_like(job->out);
      if (!onednn_product(part, same_d->second, transposed(s).t())) product(part, d.t(), s);  // (M, rows) (rows, N)
      if (r0 > 0) job->out.add_(part);
    }
  }
}

// gx (T, B, G*H) = x W_ih^T + b_ih for all time steps in one product, into a pooled buffer.
inline at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& b_ih) {
  const int64_t steps = x.size(0), B = x.size(1), I = x.size(2), GH = w_ih.size(0);
  at::Tensor gx = take({steps, B, GH}, x.options());
  at::Tensor rows = gx.view({steps * B, GH});
  tile_product(rows, x.reshape({steps * B, I}), pack_panels(w_ih.t()), b_ih);
  return gx;
}

struct Saved {
  at::Tensor acts, hprev, cprev, extra;
};

// Asks for n elements from p to be brought into cache ahead of use (write: to be written). The
// step loops fetch the next step's rows of the large buffers (gx, acts, the saved states, the
// gate gradients) while this step computes: interleaved with nn.LSTM's training steps, which
// push them out of cache, the gate passes of long-seq had taken 60% longer than in a loop alone
// (with it a long-seq step took 3% less time). Only where each thread runs its own rows
// (split_rows: a few KB a step) and for buffers too large to stay in cache: on small-ts (1.5 MB
// of gates) it cost 5%, and on charLM (all 64 rows a step, 256 KB of gx alone) 4.5%.
inline bool fetch_ahead(bool split, int64_t steps, int64_t B, int64_t GH, size_t bytes) {
  return split && steps * B * GH * int64_t(bytes) >= (1 << 22);
}
template <typename T>
inline void prefetch(const T* p, int64_t n, bool write) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * int64_t(sizeof(T)); off += 64) {
    if (write) __builtin_prefetch(c + off, 1, 3);
    else __builtin_prefetch(c + off, 0, 3);
  }
}

inline bool is_valid(const uint8_t* valid, int64_t t, int64_t B, int64_t b) { return valid == nullptr || valid[t * B + b]; }

// The sequences of a batch are independent: row b of every step's state depends on row b only.
// When the per-step products are small (our tiles, not oneDNN's threads), the batch's rows are
// split across threads once for the whole sequence, and each thread runs every time step for its
// rows: no fork and join per step (on a small-ts forward, 29% of CPU samples had been OpenMP's
// wait between each step's product and gate pass). Else every step's product and gate pass are
// threaded on their own.
inline bool split_rows(int64_t B, int64_t K, int64_t N, bool bf16) {
  return on_tiles(B, K, N, bf16) && B >= 2 && at::get_num_threads() > 1;
}

// fn(b0, b1) once for all rows, or for a share of rows on each thread (split_rows), at least 4
// rows a thread: 2 rows a thread ran slower than 4 rows on one (B=4, H=128: 4.8 against 3.6 ms).
template <typename Fn>
void over_rows(int64_t B, bool split, const Fn& fn) {
  if (!split) {
    fn(0, B);
    return;
  }
  at::parallel_for(0, B, 4, [&](int64_t b0, int64_t b1) {
    FlushDenormals flush;
    fn(b0, b1);
  });
}

// fn(b) for rows [b0, b1): in turn inside a thread's share of rows, else threaded as for_rows.
template <typename Fn>
void each_row(int64_t b0, int64_t b1, bool split, int64_t work_per_row, const Fn& fn) {
  if (split) {
    for (int64_t b = b0; b < b1; ++b) fn(b);
  } else {
    for_rows(b1 - b0, work_per_row, [&](int64_t i) { fn(b0 + i); });
  }
}

// A weight b (K, N) that every time step multiplies (W_hh^T forward, W_hh backward, or a GRU's
// blocks of them), made once per call: its panels (pack_panels) where the kernel's tiles take the
// products (on_tiles), else the matrix for `product` (oneDNN, MKL, or bf16 mode's operand).
struct StepWeight {
  at::Tensor matrix, panels;
  int64_t K, N;
};

inline StepWeight step_weight(const at::Tensor& b, int64_t B, bool bf16) {
  const int64_t K = b.size(0), N = b.size(1);
  if (on_tiles(B, K, N, bf16)) return {at::Tensor(), pack_panels(b), K, N};
  return {operand(b, bf16), at::Tensor(), K, N};
}

// out (rows, N) = a (rows, K) b over row-major memory (leading dimensions ldo, lda): the tiles
// on b's panels, without tensor views (a view per step cost ~1.5 us); else `product` on views
// (oneDNN, MKL or bf16 mode, with its scratch).
template <typename T>
void rows_product(T* out, int64_t ldo, const T* a, int64_t lda, int64_t rows, const StepWeight& b, at::Tensor& scratch_in,
                  at::Tensor& scratch_out) {
  if (b.panels.defined()) {
    tile_product<T>(out, ldo, a, lda, panels_operand<T>(b.panels), rows, b.K, b.N);
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  product(at::from_blob(out, {rows, b.N}, {ldo, 1}, opts), at::from_blob(const_cast<T*>(a), {rows, b.K}, {lda, 1}, opts),
          b.matrix, scratch_in, scratch_out);
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
template <typename T>
std::vector<at::Tensor> forward_impl(int64_t kind, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& w_ih, const at::Tensor& b_ih, const at::Tensor& w_hh,
                                     const at::Tensor& b_hh, const at::Tensor& valid_mask, bool reverse, bool save, bool bf16) {
  // x (T, B, I) and its projection here, or with w_ih empty the projection gx (T, B, G*H) itself
  const at::Tensor gx = w_ih.numel() ? input_projection(x, w_ih, b_ih) : x;
  const int64_t steps = gx.size(0), B = gx.size(1), H = h0.size(1), G = gate_count(kind), GH = G * H;
  const int64_t AW = kind == RNN_TANH || kind == RNN_RELU ? H : GH;  // a row of acts (RNN: the new h)
  const bool has_bias = b_hh.defined() && b_hh.numel() > 0;
  const uint8_t* valid = valid_mask.numel() ? valid_mask.data_ptr<uint8_t>() : nullptr;
  auto opts = gx.options();
  at::Tensor y = take({steps, B, H}, opts);
  at::Tensor h = h0.clone(), c = kind == LSTM ? c0.clone() : at::Tensor();
  Saved s;
  s.acts = take({steps, B, AW}, opts);
  if (save) {
    s.hprev = take({steps, B, H}, opts);
    if (kind == LSTM) s.cprev = take({steps, B, H}, opts);
    if (kind >= GRU_BEFORE) s.extra = take({steps, B, H}, opts);
  }
  at::Tensor gh = kind >= GRU_BEFORE ? at::empty({B, GH}, opts) : at::Tensor();  // recurrent part, GRU
  // W_hh^T (H, G*H) made contiguous once per sequence for `product` (the per-step GEMM on a
  // transposed view ran up to 1.8x slower for small batches: B=8, H=128), or packed into the
  // tiles' panels (step_weight) straight from the transposed view
  const at::Tensor w_hh_t = on_tiles(B, H, GH, bf16) ? w_hh.t() : w_hh.t().contiguous();
  const StepWeight w_t = kind == GRU_BEFORE ? StepWeight{} : step_weight(w_hh_t, B, bf16);
  const StepWeight w_rz_t = kind == GRU_BEFORE ? step_weight(w_hh_t.narrow(1, 0, 2 * H), B, bf16) : StepWeight{};
  const StepWeight w_n_t = kind == GRU_BEFORE ? step_weight(w_hh_t.narrow(1, 2 * H, H), B, bf16) : StepWeight{};
  const at::Tensor bias_or_zero = has_bias ? b_hh : at::zeros({GH}, opts);
  const T* bias = bias_or_zero.data_ptr<T>();
  T *hp = h.data_ptr<T>(), *cp = kind == LSTM ? c.data_ptr<T>() : nullptr, *g = kind >= GRU_BEFORE ? gh.data_ptr<T>() : nullptr;
  T *acts = s.acts.data_ptr<T>(), *yp = y.data_ptr<T>();
  const T* gxp = gx.data_ptr<T>();
  const bool split = split_rows(B, H, GH, bf16), ahead = fetch_ahead(split, steps, B, GH, sizeof(T));

  // every time step for the rows [b0, b1)
  over_rows(B, split, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    at::Tensor lp_in, lp_out;  // bf16 mode's scratch
    for (int64_t k = 0; k < steps; ++k) {
      const int64_t t = reverse ? steps - 1 - k : k;
      T* a = acts + t * B * AW;
      const T* xt = gxp + t * B * GH;
      T* out = yp + t * B * H;
      if (ahead && k + 1 < steps) {  // the next step's rows
        const int64_t next = reverse ? t - 1 : t + 1;
        prefetch(gxp + (next * B + b0) * GH, rows * GH, false);
        prefetch(acts + (next * B + b0) * AW, rows * AW, true);
        prefetch(yp + (next * B + b0) * H, rows * H, true);
        if (save) prefetch(s.hprev.data_ptr<T>() + (next * B + b0) * H, rows * H, true);
        if (save && kind == LSTM) prefetch(s.cprev.data_ptr<T>() + (next * B + b0) * H, rows * H, true);
      }
      if (save) {
        std::copy(hp + b0 * H, hp + b1 * H, s.hprev.data_ptr<T>() + (t * B + b0) * H);
        if (kind == LSTM) std::copy(cp + b0 * H, cp + b1 * H, s.cprev.data_ptr<T>() + (t * B + b0) * H);
      }
      if (kind == LSTM || kind == RNN_TANH || kind == RNN_RELU) {
        rows_product<T>(a + b0 * AW, AW, hp + b0 * H, H, rows, w_t, lp_in, lp_out);  // h W_hh^T; gx_t, b_hh in the pass
        each_row(b0, b1, split, GH, [&](int64_t b) {
          T* ob = out + b * H;
          if (!is_valid(valid, t, B, b)) {  // past this sequence's length: state held, output zero
            std::fill(ob, ob + H, T(0));
            return;
          }
          if (kind == LSTM) lstm_row(a + b * GH, xt + b * GH, bias, cp + b * H, hp + b * H, ob, H);
          else rnn_row(a + b * H, xt + b * H, bias, hp + b * H, ob, H, kind == RNN_RELU);
        });
        continue;
      }
      T* e = save ? s.extra.data_ptr<T>() + t * B * H : nullptr;
      // recurrent GEMMs without bias (adding it inside the GEMM would copy it each step)
      rows_product<T>(g + b0 * GH, GH, hp + b0 * H, H, rows, kind == GRU_AFTER ? w_t : w_rz_t, lp_in, lp_out);
      each_row(b0, b1, split, GH, [&](int64_t b) {  // r and z, and for reset-after the candidate too
        gru_gates_row(xt + b * GH, g + b * GH, bias, a + b * GH, hp + b * H, e ? e + b * H : nullptr, H, kind == GRU_AFTER);
      });
      if (kind == GRU_BEFORE) {
        if (e) {
          for (int64_t b = b0; b < b1; ++b) std::copy(a + b * GH + 2 * H, a + b * GH + 3 * H, e + b * H);  // r ⊙ h
        }
        rows_product<T>(g + b0 * GH + 2 * H, GH, a + b0 * GH + 2 * H, GH, rows, w_n_t, lp_in, lp_out);  // W_hn (r ⊙ h)
        each_row(b0, b1, split, H, [&](int64_t b) {
          const T* xb = xt + b * GH + 2 * H;
          const T* gb = g + b * GH + 2 * H;
          T* ab = a + b * GH + 2 * H;
          for (int64_t j = 0; j < H; ++j) ab[j] = tanh_fn(xb[j] + gb[j] + bias[2 * H + j]);
        });
      }
      each_row(b0, b1, split, H, [&](int64_t b) {
        if (is_valid(valid, t, B, b)) gru_update_row(a + b * GH, hp + b * H, out + b * H, H);
        else std::fill(out + b * H, out + (b + 1) * H, T(0));
      });
    }
  });
  std::vector<at::Tensor> result = {y, h, kind == LSTM ? c : at::empty({0}, opts)};
  if (save) {
    result.push_back(s.acts);
    result.push_back(s.hprev);
    result.push_back(kind == LSTM ? s.cprev : (kind >= GRU_BEFORE ? s.extra : at::empty({0}, opts)));
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------
template <typename T>
std::vector<at::Tensor> backward_impl(int64_t kind, const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                      const at::Tensor& acts, const at::Tensor& hprev, const at::Tensor& third,
                                      const at::Tensor& w_hh, const at::Tensor& valid_mask, bool reverse, bool has_bias,
                                      bool bf16, const at::Tensor& x, const at::Tensor& w_ih, bool need_dx,
                                      bool has_ih_bias) {
  const int64_t steps = hprev.size(0), B = hprev.size(1), H = hprev.size(2), G = gate_count(kind), GH = G * H;
  const uint8_t* valid = valid_mask.numel() ? valid_mask.data_ptr<uint8_t>() : nullptr;
  auto opts = hprev.options();
  at::Tensor d_gx = take({steps, B, GH}, opts);  // gradient of the gates' pre-activations
  at::Tensor d_gh = kind == GRU_AFTER ? take({steps, B, GH}, opts) : d_gx;  // of W_hh h + b_hh
  at::Tensor dh = dh_n.clone(), dh_next = at::empty_like(dh);
  at::Tensor dc = kind == LSTM ? dc_n.clone() : at::Tensor();
  at::Tensor direct = kind >= GRU_BEFORE ? at::empty_like(dh) : at::Tensor();  // dL/dh_{t-1} outside W_hh
  at::Tensor d_rh = kind == GRU_BEFORE ? at::empty_like(dh) : at::Tensor();
  const StepWeight w = kind == GRU_BEFORE ? StepWeight{} : step_weight(w_hh, B, bf16);
  const StepWeight w_rz = kind == GRU_BEFORE ? step_weight(w_hh.narrow(0, 0, 2 * H), B, bf16) : StepWeight{};
  const StepWeight w_n = kind == GRU_BEFORE ? step_weight(w_hh.narrow(0, 2 * H, H), B, bf16) : StepWeight{};
  const T* dyp = dy.numel() ? dy.data_ptr<T>() : nullptr;
  const int64_t dy_t = dy.numel() ? dy.stride(0) : 0, dy_b = dy.numel() ? dy.stride(1) : 0;  // dy[t, b, :] (see rows_in_place)
  T* dcp = kind == LSTM ? dc.data_ptr<T>() : nullptr;
  T* drh = kind == GRU_BEFORE ? d_rh.data_ptr<T>() : nullptr;
  T* dr = kind >= GRU_BEFORE ? direct.data_ptr<T>() : nullptr;
  T* dghp = d_gh.data_ptr<T>();
  const T* actp = acts.data_ptr<T>();
  const int64_t AW = kind <= RNN_RELU ? H : GH;  // a row of acts
  const bool split = split_rows(B, GH, H, bf16), ahead = fetch_ahead(split, steps, B, GH, sizeof(T));
  // The biases' gradients are summed as the gate gradients are made: each sequence's over its
  // steps (row b of a sum is only ever touched by the thread running row b), then over the
  // sequences after the loop. A pass over all T*B rows of the gate gradients afterwards (torch's
  // sum(0), beside MKL's weight gradients on AVX2) had taken 2.6% of a charLM GRU step there.
  // b_hh's gradient sums d_gh; b_ih's has its own sum only where it differs (reset after: d_gx;
  // or no b_hh), else it is a copy of b_hh's.
  const bool projected = w_ih.numel() > 0;  // the kernel did the input projection: x is given
  const bool own_ih_sum = projected && has_ih_bias && (kind == GRU_AFTER || !has_bias);
  at::Tensor gh_sums = has_bias ? at::zeros({B, GH}, opts) : at::Tensor();
  at::Tensor gx_sums = own_ih_sum ? at::zeros({B, GH}, opts) : at::Tensor();
  T* ghs = has_bias ? gh_sums.data_ptr<T>() : nullptr;
  T* gxs = own_ih_sum ? gx_sums.data_ptr<T>() : nullptr;

  // every time step, last to first, for the rows [b0, b1); dh and dh_next swap roles each step
  over_rows(B, split, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    T *dhp = dh.data_ptr<T>(), *dnp = dh_next.data_ptr<T>();
    at::Tensor lp_in, lp_out;  // bf16 mode's scratch
    for (int64_t k = steps - 1; k >= 0; --k) {
      const int64_t t = reverse ? steps - 1 - k : k;
      if (ahead && k > 0) {  // the next (earlier) step's rows
        const int64_t next = reverse ? t + 1 : t - 1;
        prefetch(actp + (next * B + b0) * AW, rows * AW, false);
        prefetch(d_gx.data_ptr<T>() + (next * B + b0) * GH, rows * GH, true);
        if (third.numel()) prefetch(third.data_ptr<T>() + (next * B + b0) * H, rows * H, false);
        prefetch(hprev.data_ptr<T>() + (next * B + b0) * H, rows * H, false);
        if (dyp)
          for (int64_t b = b0; b < b1; ++b) prefetch(dyp + next * dy_t + b * dy_b, H, false);
      }
      const T* a = actp + t * B * AW;
      const T* hp = hprev.data_ptr<T>() + t * B * H;
      T* dg = d_gx.data_ptr<T>() + t * B * GH;
      each_row(b0, b1, split, GH, [&](int64_t b) {
        const bool ok = is_valid(valid, t, B, b);
        T* dhb = dhp + b * H;
        T* dgb = dg + b * GH;
        if (!ok) {  // the state was held: its gradient passes through, the gates get none
          std::fill(dgb, dgb + GH, T(0));
          if (kind == GRU_AFTER) std::fill(dghp + (t * B + b) * GH, dghp + (t * B + b + 1) * GH, T(0));
          if (kind >= GRU_BEFORE) std::copy(dhb, dhb + H, dr + b * H);
          return;
        }
        if (dyp)
          for (int64_t j = 0; j < H; ++j) dhb[j] += dyp[t * dy_t + b * dy_b + j];
        const T* ab = a + b * AW;
        const T* hpb = hp + b * H;
        if (kind == LSTM) {
          lstm_grad_row(ab, third.data_ptr<T>() + (t * B + b) * H, dhb, dcp + b * H, dgb, H);
        } else if (kind == RNN_TANH || kind == RNN_RELU) {
          for (int64_t j = 0; j < H; ++j) {
            const T hn = ab[j];
            dgb[j] = dhb[j] * (kind == RNN_TANH ? T(1) - hn * hn : (hn > T(0) ? T(1) : T(0)));
          }
        } else {
          T* dghb = kind == GRU_AFTER ? dghp + (t * B + b) * GH : nullptr;
          gru_grad_row(ab, hpb, third.data_ptr<T>() + (t * B + b) * H, dhb, dgb, dghb, dr + b * H, H, kind == GRU_AFTER);
        }
      });
      T* dn = dnp + b0 * H;
      if (kind == LSTM || kind == RNN_TANH || kind == RNN_RELU) {
        rows_product<T>(dn, H, dg + b0 * GH, GH, rows, w, lp_in, lp_out);  // dL/dh_{t-1} = dG_t W_hh
      } else if (kind == GRU_AFTER) {
        rows_product<T>(dn, H, dghp + (t * B + b0) * GH, GH, rows, w, lp_in, lp_out);
      } else {
        // the candidate's GEMM first: d(r ⊙ h) = da_n W_hn; then r's gradient and the r,z GEMM
        rows_product<T>(drh + b0 * H, H, dg + b0 * GH + 2 * H, GH, rows, w_n, lp_in, lp_out);
        for (int64_t b = b0; b < b1; ++b) {
          if (!is_valid(valid, t, B, b)) continue;
          const T* ab = a + b * GH;
          const T* hpb = hp + b * H;
          T* dgb = dg + b * GH;
          for (int64_t j = 0; j < H; ++j) {
            const T r = ab[j], d = drh[b * H + j];
            dgb[j] = d * hpb[j] * r * (T(1) - r);
            dr[b * H + j] += d * r;
          }
        }
        rows_product<T>(dn, H, dg + b0 * GH, GH, rows, w_rz, lp_in, lp_out);
      }
      if (ghs || gxs) {  // this step's gate gradients into each sequence's bias sums
        each_row(b0, b1, split, GH, [&](int64_t b) {
          if (ghs) add_row(ghs + b * GH, dghp + (t * B + b) * GH, GH);  // d_gh is d_gx but for reset-after
          if (gxs) add_row(gxs + b * GH, dg + b * GH, GH);
        });
      }
      if (kind >= GRU_BEFORE) {  // plus dL/dh_{t-1} outside W_hh
        const T* __restrict from = dr + b0 * H;
        for (int64_t j = 0; j < rows * H; ++j) dn[j] += from[j];
      }
      if (valid && (kind == LSTM || kind <= RNN_RELU)) {  // held rows: the gradient passes through
        for (int64_t b = b0; b < b1; ++b)
          if (!is_valid(valid, t, B, b)) std::copy(dhp + b * H, dhp + (b + 1) * H, dnp + b * H);
      }
      std::swap(dhp, dnp);
    }
  });
  if (steps % 2 == 1) std::swap(dh, dh_next);  // where the last step's dL/dh_{t-1} went

  // weight gradients: large GEMMs over all steps; the biases' from their sums
  const int64_t S = steps * B;
  const at::Tensor dgx_rows = d_gx.reshape({S, GH}), dgh_rows = d_gh.reshape({S, GH});
  const at::Tensor hprev_rows = operand(hprev.reshape({S, H}), bf16);
  at::Tensor dw = at::empty_like(w_hh), dw_ih = projected ? at::empty_like(w_ih) : at::empty({0}, opts);
  std::vector<WeightGradient> grads;
  if (kind == GRU_BEFORE) {  // r, z rows against h_{t-1}; the candidate's against r ⊙ h_{t-1}
    grads.push_back({dw.narrow(0, 0, 2 * H), dgx_rows.narrow(1, 0, 2 * H), hprev_rows});
    grads.push_back({dw.narrow(0, 2 * H, H), dgx_rows.narrow(1, 2 * H, H), operand(third.reshape({S, H}), bf16)});
  } else {
    grads.push_back({dw, dgh_rows, hprev_rows});
  }
  if (projected) grads.push_back({dw_ih, dgx_rows, x.reshape({S, x.size(2)})});
  at::Tensor db = has_bias ? gh_sums.sum(0) : at::empty({0}, opts);
  at::Tensor db_ih = own_ih_sum ? gx_sums.sum(0) : at::empty({0}, opts);
  weight_gradients(grads, bf16);
  if (!projected) return {d_gx, dh, kind == LSTM ? dc : at::empty({0}, opts), dw, db};

  at::Tensor dx = at::empty({0}, opts);
  if (need_dx) {  // dL/dx = dG W_ih
    dx = take({steps, B, x.size(2)}, opts);
    at::Tensor dx_rows = dx.view({S, x.size(2)});
    tile_product(dx_rows, dgx_rows, pack_panels(w_ih));
  }
  if (has_ih_bias && !db_ih.numel()) db_ih = db.clone();  // b_ih and b_hh add to the same gates
  return {dx, dh, kind == LSTM ? dc : at::empty({0}, opts), dw, db, dw_ih, db_ih};
}

std::vector<at::Tensor> forward(int64_t kind, at::Tensor x, at::Tensor h0, at::Tensor c0, at::Tensor w_ih, at::Tensor b_ih,
                                at::Tensor w_hh, at::Tensor b_hh, at::Tensor valid, bool reverse, bool save, bool bf16) {
  FlushDenormals flush;
  at::NoGradGuard no_grad;
  x = x.contiguous(), h0 = h0.contiguous(), w_hh = w_hh.contiguous();
  if (w_ih.numel()) w_ih = w_ih.contiguous();
  if (b_ih.numel()) b_ih = b_ih.contiguous();
  if (c0.numel()) c0 = c0.contiguous();
  if (b_hh.numel()) b_hh = b_hh.contiguous();
  if (valid.numel()) valid = valid.contiguous();
  TORCH_CHECK(!bf16 || (x.scalar_type() == at::kFloat && !w_ih.numel()), "rnnkit: bf16 mode takes gx and float32 weights");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_forward", [&] {
    out = forward_impl<scalar_t>(kind, x, h0, c0, w_ih, b_ih, w_hh, b_hh, valid, reverse, save, bf16);
  });
  return out;
}

// The output gradient dy (T, B, H) is read by rows, dy[t, b, :] at t * stride(0) + b * stride(1):
// only each row's features need be contiguous. So a bidirectional layer's slice of its output
// gradient, and the expanded gradient of out.sum() (0 strides), are read where they are; copying
// the latter took 1-2% of a small-ts training step. A tensor whose features are not contiguous is
// copied, but only along the dimensions it does not broadcast over.
at::Tensor rows_in_place(const at::Tensor& dy) {
  if (dy.numel() == 0 || dy.size(2) == 1 || dy.stride(2) == 1) return dy;
  at::Tensor base = dy;
  for (int64_t d = 0; d < 2; ++d)
    if (dy.stride(d) == 0) base = base.narrow(d, 0, 1);
  return base.contiguous().expand(dy.sizes());
}

// {d_gx, dh0, dc0, dw_hh, db_hh}; with x and w_ih given (the kernel projected x) the input
// projection's gradients instead of d_gx: {dx (empty unless need_dx), dh0, dc0, dw_hh, db_hh,
// dw_ih, db_ih}.
std::vector<at::Tensor> backward(int64_t kind, at::Tensor dy, at::Tensor dh_n, at::Tensor dc_n, at::Tensor acts,
                                 at::Tensor hprev, at::Tensor third, at::Tensor w_hh, at::Tensor valid, bool reverse,
                                 bool has_bias, bool bf16, at::Tensor x, at::Tensor w_ih, bool need_dx, bool has_ih_bias) {
  FlushDenormals flush;
  at::NoGradGuard no_grad;
  dy = rows_in_place(dy), dh_n = dh_n.contiguous(), w_hh = w_hh.contiguous();
  if (dc_n.numel()) dc_n = dc_n.contiguous();
  if (w_ih.numel()) x = x.contiguous(), w_ih = w_ih.contiguous();
  TORCH_CHECK(!bf16 || hprev.scalar_type() == at::kFloat, "rnnkit: bf16 mode needs float32 weights");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "rnnkit_backward", [&] {
    out = backward_impl<scalar_t>(kind, dy, dh_n, dc_n, acts, hprev, third, w_hh, valid, reverse, has_bias, bf16, x, w_ih,
                                  need_dx, has_ih_bias);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// one step, for inference (no autograd): the generation and streaming loop
// ---------------------------------------------------------------------------------------------
// out[b, r] = bias[r] + sum_k w[r, k] in[b, k] for R weight rows of length K (contiguous) and B
// input rows (the caller keeps B small: a few sequences, where a GEMM's dispatch and threading
// cost more than the arithmetic). `project_plain` is the plain loop, used for float64 and as the
// float32 kernel's specification; `project` adds the float32 fast path below.
template <typename T>
void project_plain(T* __restrict out, int64_t out_stride, const T* __restrict in, int64_t in_stride, int64_t B,
                   const T* __restrict w, int64_t R, int64_t K, const T* __restrict bias) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < R; ++r) {
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < K; ++k) sum += w[r * K + k] * in[b * in_stride + k];
      out[b * out_stride + r] = bias ? bias[r] + sum : sum;
    }
  }
}

// float32: as many weight rows at a time as a vector has lanes (kStepRows: 16 with AVX-512, 8
// with AVX2), each accumulated in one vector over k, then the vectors summed into one vector of
// row sums by a tree of lane shuffles (log2 kStepRows levels: 15 adds for 16 rows rather than 16
// horizontal reductions; with `omp simd` reductions the compiler kept the accumulators on the
// stack and reduced each row with 15 scalar adds: 22% of a B=1, H=128 LSTM step). AVX2 takes 8
// rows of 32-byte vectors: 16 rows of 64-byte ones needed 32 accumulators in its 16 registers.
// Written with GCC/Clang vector types (and __builtin_shufflevector: GCC 12 or Clang), so it
// compiles to AVX-512, AVX2 or NEON alike.
using StepVector = Vector<float>::type;
constexpr int kStepRows = kVectorBytes / sizeof(float);
inline StepVector load_lanes(const float* p) { return *reinterpret_cast<const Vector<float>::unaligned*>(p); }

// One level of the tree: fold<S>(a, b) takes a's and b's lanes in blocks of S, interleaved (a's
// even blocks with b's, then a's odd blocks with b's), and adds the two, so every lane is the sum
// of two lanes of one vector. Folding accumulators 0..N-1 in pairs with S = N/2, then the results
// with S = N/4, ..., 1, lane L ends up with the sum of accumulator lane_row(L), L's bits reversed
// (its own inverse).
constexpr int fold_lane(int lane, int S, bool odd) {
  const int group = lane / (2 * S), within = lane % (2 * S);
  const int from = group * 2 * S + (odd ? S : 0) + within % S;
  return within < S ? from : kStepRows + from;  // indices past kStepRows are b's lanes
}
template <int S, int... L>
inline StepVector fold(StepVector a, StepVector b, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(a, b, fold_lane(L, S, false)...) + __builtin_shufflevector(a, b, fold_lane(L, S, true)...);
}
template <int S>
inline StepVector fold_all(StepVector* v, int n) {  // folds v[0..n) in place; the last level's sum
  for (int j = 0; j < n / 2; ++j) v[j] = fold<S>(v[2 * j], v[2 * j + 1], std::make_integer_sequence<int, kStepRows>{});
  if constexpr (S == 1) {
    return v[0];
  } else {
    return fold_all<S / 2>(v, n / 2);
  }
}
constexpr int lane_row(int lane) {
  int row = 0;
  for (int bit = 1; bit < kStepRows; bit <<= 1) row = (row << 1) | ((lane & bit) ? 1 : 0);
  return row;
}

// Rows [r0, r0 + kStepRows) of one input row: out[r0 + L] for L = 0..kStepRows-1.
inline void project_rows(float* __restrict out, const float* __restrict in, const float* __restrict w, int64_t r0,
                         int64_t K, const float* __restrict bias) {
  const int64_t K_whole = K - K % kStepRows;
  const float* rows[kStepRows];
  for (int j = 0; j < kStepRows; ++j) rows[j] = w + (r0 + lane_row(j)) * K;  // accumulator j takes row lane_row(j)
  StepVector acc[kStepRows] = {};
  for (int64_t k = 0; k < K_whole; k += kStepRows) {
    const StepVector v = load_lanes(in + k);
    for (int j = 0; j < kStepRows; ++j) acc[j] += load_lanes(rows[j] + k) * v;
  }
  StepVector sums = fold_all<kStepRows / 2>(acc, kStepRows);  // lane L: the row r0 + L
  if (bias) sums += load_lanes(bias + r0);
  for (int64_t k = K_whole; k < K; ++k) {  // the last K mod kStepRows columns
    for (int L = 0; L < kStepRows; ++L) sums[L] += w[(r0 + L) * K + k] * in[k];
  }
  for (int L = 0; L < kStepRows; ++L) out[r0 + L] = sums[L];
}

// One product of the single step: out (B, R, row stride out_stride) = in (B, K) w^T (+ bias).
template <typename T>
struct Projection {
  T* out;
  int64_t out_stride;
  const T* in;
  int64_t in_stride;
  const T* w;
  int64_t R, K;
  const T* bias;  // or nullptr
};

// Independent products in one go: their blocks of kStepRows rows share one parallel region
// (both products of an LSTM step cost less than a thread fork each).
template <typename T>
void project(std::initializer_list<Projection<T>> jobs, int64_t B) {
  if constexpr (!std::is_same_v<T, float>) {
    for (const auto& p : jobs) project_plain<T>(p.out, p.out_stride, p.in, p.in_stride, B, p.w, p.R, p.K, p.bias);
  } else {
    int64_t blocks = 0, macs = 0;
    for (const auto& p : jobs) blocks += p.R / kStepRows, macs += p.R * p.K * B;
    // threads for at least 2^14 multiply-adds each (measured: two threads pay at H=128, B=1)
    const int64_t grain = std::max<int64_t>(1, blocks * (int64_t(1) << 14) / std::max<int64_t>(1, macs));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      FlushDenormals flush;
      int64_t first = 0;  // the first block of job p
      for (const auto& p : jobs) {
        const int64_t lo = std::max(begin, first), hi = std::min(end, first + p.R / kStepRows);
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t block = lo; block < hi; ++block) {
            project_rows(p.out + b * p.out_stride, p.in + b * p.in_stride, p.w, (block - first) * kStepRows, p.K, p.bias);
          }
        }
        first += p.R / kStepRows;
      }
    });
    for (const auto& p : jobs) {
      const int64_t done = p.R - p.R % kStepRows;  // the last R mod kStepRows rows
      if (done < p.R) {
        project_plain<T>(p.out + done, p.out_stride, p.in, p.in_stride, B, p.w + done * p.K, p.R - done, p.K,
                         p.bias ? p.bias + done : nullptr);
      }
    }
  }
}

// x (B, I), h0, c0 (B, H) -> {h_1, c_1} (c_1 empty but for the LSTM): the same gate passes as
// forward_impl, with gx = W_ih x + b_ih and the recurrent product done here too.
template <typename T>
std::vector<at::Tensor> step_impl(int64_t kind, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                  const at::Tensor& w_ih, const at::Tensor& b_ih, const at::Tensor& w_hh,
                                  const at::Tensor& b_hh) {
  const int64_t B = x.size(0), I = x.size(1), H = h0.size(1), GH = gate_count(kind) * H;
  auto opts = x.options();
  // one scratch allocation: gx = W_ih x + b_ih, g = W_hh h, a (GRU: its gates), y (the row
  // functions' output copy, unused here)
  at::Tensor scratch = at::empty({B * (3 * GH + H)}, opts);
  T *xg = scratch.data_ptr<T>(), *g = xg + B * GH, *ap = g + B * GH, *op = ap + B * GH;
  const T* bias = b_hh.numel() ? b_hh.data_ptr<T>() : nullptr;
  at::Tensor bias_zeros;
  if (!bias) bias_zeros = at::zeros({GH}, opts), bias = bias_zeros.data_ptr<T>();
  const T* w = w_hh.data_ptr<T>();
  const T* h_in = h0.data_ptr<T>();
  const Projection<T> input{xg, GH, x.data_ptr<T>(), I, w_ih.data_ptr<T>(), GH, I, b_ih.numel() ? b_ih.data_ptr<T>() : nullptr};
  if (kind == LSTM || kind == RNN_TANH || kind == RNN_RELU) {
    project<T>({input, {g, GH, h_in, H, w, GH, H, nullptr}}, B);  // gx, and W_hh h: the gate pass adds b_hh
    at::Tensor h = at::empty({B, H}, opts), c = kind == LSTM ? c0.clone() : at::empty({0}, opts);
    T* hp = h.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      if (kind == LSTM) lstm_row(g + b * GH, xg + b * GH, bias, c.data_ptr<T>() + b * H, hp + b * H, op + b * H, H);
      else rnn_row(g + b * H, xg + b * H, bias, hp + b * H, op + b * H, H, kind == RNN_RELU);
    }
    return {h, c};
  }
  at::Tensor h = h0.clone();
  T* hp = h.data_ptr<T>();
  project<T>({input, {g, GH, hp, H, w, kind == GRU_AFTER ? GH : 2 * H, H, nullptr}}, B);  // gx, W_hh h (before: r, z rows)
  for (int64_t b = 0; b < B; ++b) {
    gru_gates_row(xg + b * GH, g + b * GH, bias, ap + b * GH, hp + b * H, static_cast<T*>(nullptr), H, kind == GRU_AFTER);
  }
  if (kind == GRU_BEFORE) {
    project<T>({{g + 2 * H, GH, ap + 2 * H, GH, w + 2 * H * H, H, H, nullptr}}, B);  // W_hn (r ⊙ h)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        const int64_t n = b * GH + 2 * H + j;
        ap[n] = tanh_fn(xg[n] + g[n] + bias[2 * H + j]);
      }
    }
  }
  for (int64_t b = 0; b < B; ++b) gru_update_row(ap + b * GH, hp + b * H, op + b * H, H);
  return {h, at::empty({0}, opts)};
}

// Whether `step` can run these arguments: CPU tensors of one floating dtype (float32 or float64),
// x (B, I) with 1 <= B <= max_batch, h0 and c0 (B, H), w_ih (G*H, I), w_hh (G*H, H), biases (G*H)
// or empty. The caller validates a cell call and reports what is wrong; the kernel only declines,
// which also keeps it from reading out of bounds whatever it is given.
bool step_applies(int64_t kind, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
                  const at::Tensor& b_ih, const at::Tensor& w_hh, const at::Tensor& b_hh, int64_t max_batch) {
  if (kind < RNN_TANH || kind > GRU_AFTER || x.dim() != 2 || h0.dim() != 2 || w_ih.dim() != 2 || w_hh.dim() != 2) return false;
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  const int64_t B = x.size(0), H = w_hh.size(1), GH = gate_count(kind) * H;
  if (B < 1 || B > max_batch || h0.size(0) != B || h0.size(1) != H || w_ih.size(0) != GH || w_ih.size(1) != x.size(1) ||
      w_hh.size(0) != GH) {
    return false;
  }
  if (kind == LSTM && !(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == H)) return false;
  for (const at::Tensor* bias : {&b_ih, &b_hh}) {
    if (bias->numel() && (bias->dim() != 1 || bias->size(0) != GH || bias->scalar_type() != dtype || !bias->is_cpu())) return false;
  }
  const auto fits = [&](const at::Tensor& t) { return t.scalar_type() == dtype && t.is_cpu(); };
  return fits(x) && fits(h0) && fits(w_ih) && fits(w_hh) && (kind != LSTM || fits(c0));
}

// One step, or an empty list when step_applies is false.
std::vector<at::Tensor> step(int64_t kind, at::Tensor x, at::Tensor h0, at::Tensor c0, at::Tensor w_ih, at::Tensor b_ih,
                             at::Tensor w_hh, at::Tensor b_hh, int64_t max_batch) {
  if (!step_applies(kind, x, h0, c0, w_ih, b_ih, w_hh, b_hh, max_batch)) return {};
  FlushDenormals flush;
  at::NoGradGuard no_grad;
  x = x.contiguous(), h0 = h0.contiguous(), w_ih = w_ih.contiguous(), w_hh = w_hh.contiguous();
  if (kind == LSTM) c0 = c0.contiguous();
  if (b_ih.numel()) b_ih = b_ih.contiguous();
  if (b_hh.numel()) b_hh = b_hh.contiguous();
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_step", [&] {
    out = step_impl<scalar_t>(kind, x, h0, c0, w_ih, b_ih, w_hh, b_hh);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// dropout between layers, with a counter-based mask (rnnkit/dropout.py is its reference)
// ---------------------------------------------------------------------------------------------
// Element i of x (in contiguous order) is kept, and scaled by `scale` = 1 / (1 - p), iff the high
// 32 bits of SplitMix64's i-th output from `key` are >= `threshold` (= round(p 2^32)); else it is
// zero. The mask is a function of (key, i), so nothing is stored: backward is this same call on
// the gradient. Threaded and vectorised (64-bit multiplies), where torch's bernoulli_ draws from
// one serial Mersenne Twister (about 10 ns an element on this host).
inline uint64_t splitmix64(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
void counter_dropout_range(const T* __restrict src, T* __restrict dst, int64_t begin, int64_t end, uint64_t key,
                           uint64_t threshold, T scale) {
  // a plain function of pointers: inside the dispatch lambda GCC did not vectorise it (8x slower)
  for (int64_t i = begin; i < end; ++i) dst[i] = (splitmix64(key, uint64_t(i)) >> 32) >= threshold ? T(src[i] * scale) : T(0);
}

at::Tensor counter_dropout(const at::Tensor& x, int64_t key, int64_t threshold, double scale) {
  TORCH_CHECK(x.device().is_cpu(), "rnnkit: counter_dropout takes CPU tensors");
  TORCH_CHECK(threshold >= 0 && threshold <= (int64_t(1) << 32), "rnnkit: counter_dropout's threshold is in [0, 2^32]");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const uint64_t k = uint64_t(key), thr = uint64_t(threshold);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "rnnkit_counter_dropout", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      counter_dropout_range<scalar_t>(src, dst, begin, end, k, thr, static_cast<scalar_t>(scale));
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "whole-sequence recurrence forward (one layer, one direction)");
  m.def("backward", &backward, "whole-sequence BPTT backward (one layer, one direction)");
  m.def("counter_dropout", &counter_dropout, "dropout with a counter-based (SplitMix64) mask; backward is the same call");
  m.def("step", &step, "one step of a cell, for inference (no autograd); empty if the arguments do not fit");
}

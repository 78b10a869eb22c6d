// LSTM and GRU sequences, forward and backward, as XLA:CPU custom calls (jax.ffi): one call runs the whole time
// loop, so a step costs its arithmetic and not XLA's per-kernel dispatch (~20 kernels a step in a lax.scan on the
// CPU). ppolab/cell_kernels.py compiles this file on first use and falls back to the lax.scan where it cannot.
//
// The equations, the gate order and the residuals are those of ppolab/cells.py (its docstrings are the spec):
//   LSTM  z = zx_t + h W_h; i, f, o = sigmoid, g = tanh; c' = f c + i g; h' = o tanh(c')
//   GRU   zh = h W_h; r = sigmoid(x_r + zh_r); u = sigmoid(x_z + zh_z); hn = zh_n + b_hn; n = tanh(x_n + r hn);
//         h' = (1 - u) n + u h
// with the carry reset to zeros before the step wherever starts[t, b]. Layout: leading dims N (vmapped), then time
// L, batch B, features; float32, IEEE arithmetic (no fast-math); the inner loops run over contiguous features so the
// compiler vectorizes them, and tanh / sigmoid are written out (below) so that they vectorize too.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;
using Pred = ffi::Buffer<ffi::PRED>;

namespace {

// exp(x) for x in [-87, 87]: Cody-Waite range reduction x = n ln2 + r and a degree-7 polynomial for exp(r)
// (Cephes' expf constants), scaled by 2^n through the exponent bits. Within 2 ulp of exp; no library call.
inline float exp_poly(float x) {
  x = std::min(87.0f, std::max(-87.0f, x));
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// tanh: a rational minimax approximation where |x| < 0.55 (no cancellation), 1 - 2 / (exp(2|x|) + 1) beyond;
// within 1e-7 absolute and 3e-7 relative of tanh over all float32 (checked by tests/test_cell_kernels.py).
inline float tanh_f(float x) {
  float a = std::min(std::fabs(x), 9.0f);
  float big = 1.0f - 2.0f / (exp_poly(2.0f * a) + 1.0f);
  float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  float small = std::fabs(x * p / q);
  return std::copysign(a < 0.55f ? small : big, x);
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

#define RESTRICT __restrict__

// One LSTM step's pointwise part for one row: z [4H] -> gates [4H] (i, f, g, o), c', tanh(c'), h' [H].
void lstm_pointwise(const float* RESTRICT z, const float* RESTRICT c_prev, float* RESTRICT gates, float* RESTRICT c,
                    float* RESTRICT tc, float* RESTRICT h, int64_t H) {
  for (int64_t k = 0; k < 2 * H; ++k) gates[k] = sigmoid_f(z[k]);
  for (int64_t k = 2 * H; k < 3 * H; ++k) gates[k] = tanh_f(z[k]);
  for (int64_t k = 3 * H; k < 4 * H; ++k) gates[k] = sigmoid_f(z[k]);
  for (int64_t j = 0; j < H; ++j) {
    const float cv = gates[H + j] * c_prev[j] + gates[j] * gates[2 * H + j];
    const float tv = tanh_f(cv);
    c[j] = cv, tc[j] = tv, h[j] = gates[3 * H + j] * tv;
  }
}

// Its backward for one row: dz [4H] and the gradient dc * f into the carry (before any reset).
void lstm_pointwise_grad(const float* RESTRICT gates, const float* RESTRICT c_prev, const float* RESTRICT tc,
                         const float* RESTRICT g_h, const float* RESTRICT g_c, const float* RESTRICT dh_next,
                         const float* RESTRICT dc_next, float* RESTRICT dz, float* RESTRICT dc_prev, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j], tv = tc[j];
    const float dh = g_h[j] + dh_next[j];
    const float dc = g_c[j] + dc_next[j] + dh * o * (1.0f - tv * tv);
    dz[j] = dc * g * i * (1.0f - i);
    dz[H + j] = dc * c_prev[j] * f * (1.0f - f);
    dz[2 * H + j] = dc * i * (1.0f - g * g);
    dz[3 * H + j] = dh * tv * o * (1.0f - o);
    dc_prev[j] = dc * f;
  }
}

// One GRU step's pointwise part for one row: x = zx [3H], z = h W_h [3H] -> r, u, n, hn, h' [H].
void gru_pointwise(const float* RESTRICT x, const float* RESTRICT z, const float* RESTRICT b_hn,
                   const float* RESTRICT h_prev, float* RESTRICT r, float* RESTRICT u, float* RESTRICT n,
                   float* RESTRICT hn, float* RESTRICT h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    r[j] = sigmoid_f(x[j] + z[j]);
    u[j] = sigmoid_f(x[H + j] + z[H + j]);
    hn[j] = z[2 * H + j] + b_hn[j];
  }
  for (int64_t j = 0; j < H; ++j) n[j] = tanh_f(x[2 * H + j] + r[j] * hn[j]);
  for (int64_t j = 0; j < H; ++j) h[j] = (1.0f - u[j]) * n[j] + u[j] * h_prev[j];
}

// Its backward for one row: dzx, dzh [3H] and dh * u (the direct path into the carry).
void gru_pointwise_grad(const float* RESTRICT r, const float* RESTRICT u, const float* RESTRICT n,
                        const float* RESTRICT hn, const float* RESTRICT h_prev, const float* RESTRICT g_h,
                        const float* RESTRICT dh_next, float* RESTRICT dzx, float* RESTRICT dzh,
                        float* RESTRICT direct, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float dh = g_h[j] + dh_next[j];
    const float dn = dh * (1.0f - u[j]) * (1.0f - n[j] * n[j]);
    const float dr = dn * hn[j] * r[j] * (1.0f - r[j]);
    const float du = dh * (h_prev[j] - n[j]) * u[j] * (1.0f - u[j]);
    dzx[j] = dr, dzx[H + j] = du, dzx[2 * H + j] = dn;
    dzh[j] = dr, dzh[H + j] = du, dzh[2 * H + j] = dn * r[j];
    direct[j] = dh * u[j];
  }
}

// Register blocks of the products below, in GCC's / Clang's portable vector types (8 floats; lowered to AVX / NEON).
typedef float v8 __attribute__((vector_size(32)));
inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// out[r, :16] = add[r, :16] (or 0) + sum_k a(r, k) w[k, :16] for R rows, a(r, k) = a[r * sr + k * sk] (a row-major
// [R, K] block: sr = K, sk = 1; the transpose of a [K, R] block: sr = 1, sk = lda): R x 16 accumulators held in
// registers across the reduction, each row of w read once for all R rows.
template <int R>
inline void matmul_block16(const float* a, const float* w, const float* add, float* out, int64_t K, int64_t N,
                           int64_t sr, int64_t sk) {
  v8 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = add ? load8(add + r * N) : v8{};
    acc[r][1] = add ? load8(add + r * N + 8) : v8{};
  }
  for (int64_t k = 0; k < K; ++k) {
    const v8 w0 = load8(w + k * N), w1 = load8(w + k * N + 8);
    for (int r = 0; r < R; ++r) {
      const v8 ar = v8{} + a[r * sr + k * sk];
      acc[r][0] += ar * w0;
      acc[r][1] += ar * w1;
    }
  }
  for (int r = 0; r < R; ++r) store8(out + r * N, acc[r][0]), store8(out + r * N + 8, acc[r][1]);
}

// the same for one column (the tail where N is not a multiple of 16)
template <int R>
inline void matmul_column(const float* a, const float* w, const float* add, float* out, int64_t K, int64_t N,
                          int64_t sr, int64_t sk) {
  for (int r = 0; r < R; ++r) {
    float acc = add ? add[r * N] : 0.0f;
    for (int64_t k = 0; k < K; ++k) acc += a[r * sr + k * sk] * w[k * N];
    out[r * N] = acc;
  }
}

template <int R>
inline void matmul_rows(const float* a, const float* w, const float* add, float* out, int64_t K, int64_t N,
                        int64_t sr, int64_t sk) {
  int64_t n = 0;
  for (; n + 16 <= N; n += 16) matmul_block16<R>(a, w + n, add ? add + n : nullptr, out + n, K, N, sr, sk);
  for (; n < N; ++n) matmul_column<R>(a, w + n, add ? add + n : nullptr, out + n, K, N, sr, sk);
}

// out[M, N] = add[M, N] (or 0 where add is null) + a[M, K] @ w[K, N]; every sum runs over k in order.
void matmul(const float* a, const float* w, const float* add, float* out, int64_t M, int64_t K, int64_t N) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) matmul_rows<4>(a + m * K, w, add ? add + m * N : nullptr, out + m * N, K, N, K, 1);
  for (; m < M; ++m) matmul_rows<1>(a + m * K, w, add ? add + m * N : nullptr, out + m * N, K, N, K, 1);
}

// out[M, N] = a[K, M]^T @ b[K, N] (a weight gradient: the sum over K rows of outer products, in order of k).
void matmul_tn(const float* a, const float* b, float* out, int64_t K, int64_t M, int64_t N) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) matmul_rows<4>(a + m, b, nullptr, out + m * N, K, N, 1, M);
  for (; m < M; ++m) matmul_rows<1>(a + m, b, nullptr, out + m * N, K, N, 1, M);
}

// fn(0), ..., fn(n - 1), spread over XLA's CPU thread pool: the calling thread and up to (threads - 1) pool tasks
// take members from one counter, and the caller waits only for members already taken (a task that starts late
// finds none left), so it never waits on a task that has not started. Members are independent; each is computed
// exactly as alone.
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int64_t n, const Fn& fn) {
  const int64_t threads = std::min<int64_t>(n, pool.num_threads());
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const Fn* body = &fn;
  auto work = [state, body, n]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      (*body)(i);
      std::lock_guard<std::mutex> lock(state->mu);
      if (++state->done == n) state->cv.notify_all();
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n; });
}

void transpose(const float* w, float* wt, int64_t H, int64_t G) {
  for (int64_t j = 0; j < H; ++j)
    for (int64_t k = 0; k < G; ++k) wt[k * H + j] = w[j * G + k];
}

int64_t leading(F32& x, int trailing) {
  int64_t n = 1;
  auto d = x.dimensions();
  for (size_t i = 0; i + trailing < d.size(); ++i) n *= d[i];
  return n;
}

// ---- LSTM ---------------------------------------------------------------------------------------------------------
// zx [N, L, B, 4H], wh [N, H, 4H], starts [N, L, B], c0, h0 [N, B, H] ->
// hs, cs [N, L, B, H]; gates (i, f, g, o after their nonlinearities) [N, L, B, 4H]; the carry each step read (after
// its reset) c_prev, h_prev [N, L, B, H]; tanh(c') tc [N, L, B, H]. The N members run in parallel.
ffi::Error LstmForwardImpl(ffi::ThreadPool pool, F32 zx, F32 wh, Pred starts, F32 c0, F32 h0, Out hs, Out cs,
                           Out gates, Out c_prev, Out h_prev, Out tc) {
  auto d = zx.dimensions();
  const int64_t L = d[d.size() - 3], B = d[d.size() - 2], G = d[d.size() - 1], H = G / 4, N = leading(zx, 3);
  parallel_for(pool, N, [&](int64_t n) {
    std::vector<float> z(B * G);
    const float* w = wh.typed_data() + n * H * G;
    const float* c = c0.typed_data() + n * B * H;
    const float* h = h0.typed_data() + n * B * H;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t ts = (n * L + t) * B;  // row of (n, t, b = 0)
      const bool* st = starts.typed_data() + ts;
      float* cp = c_prev->typed_data() + ts * H;
      float* hp = h_prev->typed_data() + ts * H;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          cp[b * H + j] = st[b] ? 0.0f : c[b * H + j];
          hp[b * H + j] = st[b] ? 0.0f : h[b * H + j];
        }
      }
      matmul(hp, w, zx.typed_data() + ts * G, z.data(), B, H, G);
      float* gt = gates->typed_data() + ts * G;
      float* cn = cs->typed_data() + ts * H;
      float* hn = hs->typed_data() + ts * H;
      float* tn = tc->typed_data() + ts * H;
      for (int64_t b = 0; b < B; ++b)
        lstm_pointwise(z.data() + b * G, cp + b * H, gt + b * G, cn + b * H, tn + b * H, hn + b * H, H);
      c = cn, h = hn;
    }
  });
  return ffi::Error::Success();
}

// g_hs, g_cs [N, L, B, H] (cotangents of hs, cs), the forward's gates, c_prev, h_prev, tc, wh, starts ->
// dz [N, L, B, 4H] (gradient of z = zx + h W_h of every step), dwh [N, H, 4H] (of W_h: sum_t h_prev^T dz),
// dc0, dh0 [N, B, H]. The N members run in parallel.
ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, F32 g_hs, F32 g_cs, F32 gates, F32 c_prev, F32 h_prev, F32 tc,
                            F32 wh, Pred starts, Out dz, Out dwh, Out dc0, Out dh0) {
  auto d = g_hs.dimensions();
  const int64_t L = d[d.size() - 3], B = d[d.size() - 2], H = d[d.size() - 1], G = 4 * H, N = leading(g_hs, 3);
  parallel_for(pool, N, [&](int64_t n) {
    std::vector<float> wt(G * H), dc(B * H);
    transpose(wh.typed_data() + n * H * G, wt.data(), H, G);
    float* dh_next = dh0->typed_data() + n * B * H;  // carried backwards; holds dh0 / dc0 at the end
    float* dc_next = dc0->typed_data() + n * B * H;
    std::fill(dh_next, dh_next + B * H, 0.0f);
    std::fill(dc_next, dc_next + B * H, 0.0f);
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t ts = (n * L + t) * B;
      const bool* st = starts.typed_data() + ts;
      float* dzt = dz->typed_data() + ts * G;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r = (ts + b) * H;
        lstm_pointwise_grad(gates.typed_data() + (ts + b) * G, c_prev.typed_data() + r, tc.typed_data() + r,
                            g_hs.typed_data() + r, g_cs.typed_data() + r, dh_next + b * H, dc_next + b * H,
                            dzt + b * G, dc.data() + b * H, H);
      }
      matmul(dzt, wt.data(), nullptr, dh_next, B, G, H);
      std::copy(dc.begin(), dc.end(), dc_next);
      for (int64_t b = 0; b < B; ++b) {  // a reset step passes no gradient to the carry before it
        if (!st[b]) continue;
        std::fill(dh_next + b * H, dh_next + (b + 1) * H, 0.0f);
        std::fill(dc_next + b * H, dc_next + (b + 1) * H, 0.0f);
      }
    }
    const int64_t rows = n * L * B;
    matmul_tn(h_prev.typed_data() + rows * H, dz->typed_data() + rows * G, dwh->typed_data() + n * H * G, L * B, H, G);
  });
  return ffi::Error::Success();
}

// ---- GRU ----------------------------------------------------------------------------------------------------------
// zx [N, L, B, 3H], wh [N, H, 3H], b_hn [N, H], starts [N, L, B], h0 [N, B, H] ->
// hs [N, L, B, H]; residuals r, u, n, hn and the carry each step read (after its reset) h_prev, each [N, L, B, H].
// The N members run in parallel.
ffi::Error GruForwardImpl(ffi::ThreadPool pool, F32 zx, F32 wh, F32 b_hn, Pred starts, F32 h0, Out hs, Out r_out,
                          Out u_out, Out n_out, Out hn_out, Out h_prev) {
  auto d = zx.dimensions();
  const int64_t L = d[d.size() - 3], B = d[d.size() - 2], G = d[d.size() - 1], H = G / 3, N = leading(zx, 3);
  parallel_for(pool, N, [&](int64_t n) {
    std::vector<float> zh(B * G);
    const float* w = wh.typed_data() + n * H * G;
    const float* bias = b_hn.typed_data() + n * H;
    const float* h = h0.typed_data() + n * B * H;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t ts = (n * L + t) * B;
      const bool* st = starts.typed_data() + ts;
      float* hp = h_prev->typed_data() + ts * H;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) hp[b * H + j] = st[b] ? 0.0f : h[b * H + j];
      matmul(hp, w, nullptr, zh.data(), B, H, G);
      float* out = hs->typed_data() + ts * H;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = (ts + b) * H;
        gru_pointwise(zx.typed_data() + (ts + b) * G, zh.data() + b * G, bias, hp + b * H, r_out->typed_data() + o,
                      u_out->typed_data() + o, n_out->typed_data() + o, hn_out->typed_data() + o, out + b * H, H);
      }
      h = out;
    }
  });
  return ffi::Error::Success();
}

// g_hs [N, L, B, H], the forward's r, u, n, hn, h_prev, wh, starts ->
// dzx [N, L, B, 3H] (gradient of x W_i + b_i), dzh [N, L, B, 3H] (of h W_h + [0, 0, b_hn]), dwh [N, H, 3H] (of W_h:
// sum_t h_prev^T dzh), dh0 [N, B, H]. The N members run in parallel.
ffi::Error GruBackwardImpl(ffi::ThreadPool pool, F32 g_hs, F32 r_in, F32 u_in, F32 n_in, F32 hn_in, F32 h_prev,
                           F32 wh, Pred starts, Out dzx, Out dzh, Out dwh, Out dh0) {
  auto d = g_hs.dimensions();
  const int64_t L = d[d.size() - 3], B = d[d.size() - 2], H = d[d.size() - 1], G = 3 * H, N = leading(g_hs, 3);
  parallel_for(pool, N, [&](int64_t n) {
    std::vector<float> wt(G * H), direct(B * H);
    transpose(wh.typed_data() + n * H * G, wt.data(), H, G);
    float* dh_next = dh0->typed_data() + n * B * H;
    std::fill(dh_next, dh_next + B * H, 0.0f);
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t ts = (n * L + t) * B;
      const bool* st = starts.typed_data() + ts;
      float* dzh_t = dzh->typed_data() + ts * G;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = (ts + b) * H;
        gru_pointwise_grad(r_in.typed_data() + o, u_in.typed_data() + o, n_in.typed_data() + o,
                           hn_in.typed_data() + o, h_prev.typed_data() + o, g_hs.typed_data() + o, dh_next + b * H,
                           dzx->typed_data() + (ts + b) * G, dzh_t + b * G, direct.data() + b * H, H);
      }
      matmul(dzh_t, wt.data(), direct.data(), dh_next, B, G, H);  // dh u + dzh W_h^T
      for (int64_t b = 0; b < B; ++b)  // a reset step passes no gradient to the carry before it
        if (st[b]) std::fill(dh_next + b * H, dh_next + (b + 1) * H, 0.0f);
    }
    const int64_t rows = n * L * B;
    matmul_tn(h_prev.typed_data() + rows * H, dzh->typed_data() + rows * G, dwh->typed_data() + n * H * G, L * B, H,
              G);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PpolabLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<Pred>().Arg<F32>()
                                  .Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PpolabLstmBackward, LstmBackwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<Pred>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PpolabGruForward, GruForwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<Pred>()
                                  .Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PpolabGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<Pred>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>());

// tensorlstm's compiled kernels: the elementwise part of one LSTM / GRU / tLSTM time step, forward and backward,
// each in one pass over the batch.
//
// Used by cells/fused_loop.py and the tLSTM's cells/tlstm_fused.py through ctypes (tensorlstm/native.py compiles
// this file once per machine and caches the library). Without it an LSTM step runs ~11 torch ops forward and ~11
// backward on (B, H) slices, each a separate pass over memory and a dispatch; here each is one loop whose values
// stay in registers.
//
// Every kernel has the C signature (B, H, operand pointers, row strides): operand k is a row-major (B, width)
// matrix at p[k] whose rows are s[k] elements apart (columns contiguous); a null pointer is an absent operand.
// The formulas are those of fused_loop.py's torch-op path: sigmoid(x) = 1 / (1 + exp(-x)),
// tanh(x) = 2 sigmoid(2x) - 1, lerp as torch.lerp; the backward works from the saved activations (no exp).
// exp is glibc's, vectorized by libmvec (at most 4 ulp) where the compiler vectorizes the loop.
// Gate layouts as torch.nn: LSTM [i, f, g, o], GRU [r, z, n], blocks of H columns.
// The tLSTM kernels (at the end) take (B, N, M, taps, pointers, strides) with two strides per operand: operand k's
// row (b, n) starts at p[k] + b * s[2k] + n * s[2k + 1].

#include <cstdint>

#pragma omp declare simd notinbranch
extern "C" float expf(float);
#pragma omp declare simd notinbranch
extern "C" double exp(double);

namespace {

template <typename T>
struct Mat {  // operand k of a kernel: row b starts at p[k] + b * s[k]
  T* p;
  long s;
  Mat(void* const* ptrs, const long* strides, int k) : p(static_cast<T*>(ptrs[k])), s(strides[k]) {}
  T* operator[](long b) const { return p + b * s; }
  explicit operator bool() const { return p != nullptr; }
};

inline float ex(float x) { return expf(x); }
inline double ex(double x) { return exp(x); }

template <typename T>
inline T sig(T x) { return T(1) / (T(1) + ex(-x)); }

template <typename T>
inline T tnh(T x) { return T(2) * sig(T(2) * x) - T(1); }

template <typename T>
inline T dsig(T y) { return (T(1) - y) * y; }  // sigmoid' from its value

// through h = lerp(n, h_{t-1}, z), both GRU forms: dz = dL/d(z pre-activation), dn = dL/d(n pre-activation)
template <typename T>
inline void zn_backward(T d, T z, T n, T hp, T& dz, T& dn) {
  dz = (hp - n) * d * dsig(z);
  dn = (d - d * z) * (T(1) - n * n);
}

template <typename T>
inline T lerp(T start, T end, T w) {  // torch.lerp: start + w (end - start), from the nearer end
  return w < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// One LSTM cell from its four pre-activations: the activated gates into ab[j + k H] (k = i, f, g, o), then
// c = f c_prev + i g, tc = tanh(c), h = o tc.
template <typename T>
inline void lstm_point(T pi, T pf, T pg, T po, T c_prev, T* ab, long H, long j, T& c, T& tc, T& h) {
  T i = sig(pi), f = sig(pf), g = tnh(pg), o = sig(po);
  ab[j] = i;
  ab[H + j] = f;
  ab[2 * H + j] = g;
  ab[3 * H + j] = o;
  c = f * c_prev + i * g;
  tc = tnh(c);
  h = o * tc;
}

// LSTM step: a (B, 4H) = x W + h U, plus the bias (B, 4H; row stride 0: one row for all), the pre-activations ->
// activated in place; c = f c_prev + i g, tc = tanh(c), h = o tc. Operands: a, bias, c_prev, c, tc, h.
template <typename T>
void lstm_forward(long B, long H, void* const* p, const long* s) {
  const Mat<T> a{p, s, 0}, bias{p, s, 1}, cp{p, s, 2}, c{p, s, 3}, tc{p, s, 4}, h{p, s, 5};
  for (long b = 0; b < B; ++b) {
    T *ab = a[b], *bb = bias[b], *cpb = cp[b], *cb = c[b], *tcb = tc[b], *hb = h[b];
#pragma omp simd
    for (long j = 0; j < H; ++j)
      lstm_point(ab[j] + bb[j], ab[H + j] + bb[H + j], ab[2 * H + j] + bb[2 * H + j], ab[3 * H + j] + bb[3 * H + j],
                 cpb[j], ab, H, j, cb[j], tcb[j], hb[j]);
  }
}

// One LSTM cell's backward from the activated gates ab[j + k H] and tanh(c) t, with d = dL/dh_t and dc = dL/dc_t
// (in; out: dL/dc_{t-1} through f): the pre-activation gradients into dab[j + k H].
template <typename T>
inline void lstm_point_backward(T d, const T* ab, T cp, T t, T* dab, long H, long j, T& dc) {
  T i = ab[j], f = ab[H + j], g = ab[2 * H + j], o = ab[3 * H + j];
  dab[3 * H + j] = d * t * dsig(o);
  T dcj = dc + d * o * (T(1) - t * t);
  dab[j] = dcj * g * dsig(i);
  dab[H + j] = dcj * cp * dsig(f);
  dab[2 * H + j] = dcj * i * (T(1) - g * g);
  dc = dcj * f;
}

// LSTM step backward. Operands: dh (dL/dh_t), dc (in: dL/dc_t from step t+1; out: dL/dc_{t-1} through f),
// a (activated gates), c_prev, tc, da (B, 4H) out: dL/d(pre-activations).
template <typename T>
void lstm_backward(long B, long H, void* const* p, const long* s) {
  const Mat<T> dh{p, s, 0}, dc{p, s, 1}, a{p, s, 2}, cp{p, s, 3}, tc{p, s, 4}, da{p, s, 5};
  for (long b = 0; b < B; ++b) {
    T *dhb = dh[b], *dcb = dc[b], *ab = a[b], *cpb = cp[b], *tcb = tc[b], *dab = da[b];
#pragma omp simd
    for (long j = 0; j < H; ++j) lstm_point_backward(dhb[j], ab, cpb[j], tcb[j], dab, H, j, dcb[j]);
  }
}

template <typename T>
struct Cols {  // a transposed operand: the (G, B) matrix at p whose row col holds column col of a (B, G) one
  const T* p;
  long s;
  Cols(void* const* ptrs, const long* strides, int k) : p(static_cast<const T*>(ptrs[k])), s(strides[k]) {}
  const T* col(long b) const { return p + b; }  // element (b, j) at col(b)[j * s]
  explicit operator bool() const { return p != nullptr; }
};

// LSTM step whose recurrent product came out transposed, gT (4H, B) = U^T h^T (fused_loop.TransposedStep):
// pre-activations = gT^T + xw + bias, activated into a (B, 4H); then as lstm_forward. gT is read with a stride
// (a gather), which cost less than copying it into rows first. Operands: xw, bias (row stride 0), gT
// (transposed), c_prev, c, tc, h, a.
template <typename T>
void lstm_forward_t(long B, long H, void* const* p, const long* s) {
  const Mat<T> xw{p, s, 0}, bias{p, s, 1}, cp{p, s, 3}, c{p, s, 4}, tc{p, s, 5}, h{p, s, 6}, a{p, s, 7};
  const Cols<T> g{p, s, 2};
  const long gs = g.s;
  for (long b = 0; b < B; ++b) {
    const T *xb = xw[b], *bb = bias[b], *gb = g.col(b);
    T *cpb = cp[b], *cb = c[b], *tcb = tc[b], *hb = h[b], *ab = a[b];
#pragma omp simd
    for (long j = 0; j < H; ++j)
      lstm_point(gb[j * gs] + (xb[j] + bb[j]), gb[(H + j) * gs] + (xb[H + j] + bb[H + j]),
                 gb[(2 * H + j) * gs] + (xb[2 * H + j] + bb[2 * H + j]),
                 gb[(3 * H + j) * gs] + (xb[3 * H + j] + bb[3 * H + j]), cpb[j], ab, H, j, cb[j], tcb[j], hb[j]);
  }
}

// lstm_backward with dL/dh_t given in two parts, g (B, H; the output's gradient, or null) + dhT^T (dhT (H, B) =
// U da_{t+1}^T, the transposed product, or null). Operands: dc, g, dhT (transposed), a, c_prev, tc, da.
template <typename T>
void lstm_backward_t(long B, long H, void* const* p, const long* s) {
  const Mat<T> dc{p, s, 0}, g{p, s, 1}, a{p, s, 3}, cp{p, s, 4}, tc{p, s, 5}, da{p, s, 6};
  const Cols<T> dT{p, s, 2};
  const long ds = dT.s;
  for (long b = 0; b < B; ++b) {
    T *dcb = dc[b], *ab = a[b], *cpb = cp[b], *tcb = tc[b], *dab = da[b];
    const T *gb = g ? g[b] : nullptr, *db = dT ? dT.col(b) : nullptr;
    // one loop per combination of the optional parts, so that none of them tests a pointer per element (which
    // kept the compiler from vectorizing it: 2.7x slower at B32 x H512)
    auto run = [&](auto d) {
#pragma omp simd
      for (long j = 0; j < H; ++j) lstm_point_backward(d(j), ab, cpb[j], tcb[j], dab, H, j, dcb[j]);
    };
    if (gb && db)
      run([&](long j) { return gb[j] + db[j * ds]; });
    else if (db)
      run([&](long j) { return db[j * ds]; });
    else if (gb)
      run([&](long j) { return gb[j]; });
    else
      run([](long) { return T(0); });
  }
}

// reset-after GRU step: with xb = xw + bias, r, z = sigmoid(xb_rz + hu_rz), n = tanh(xb_n + r hu_n),
// h = lerp(n, h_{t-1}, z). Operands: xw (B, 3H) = x W, bias (B, 3H; row stride 0), hu (B, 3H) = h U + [0, 0, b_hn],
// h_prev, a (B, 3H) out = [r, z, n], h out.
template <typename T>
void gru_forward(long B, long H, void* const* p, const long* s) {
  const Mat<T> xw{p, s, 0}, bias{p, s, 1}, hu{p, s, 2}, hp{p, s, 3}, a{p, s, 4}, h{p, s, 5};
  for (long b = 0; b < B; ++b) {
    T *xb = xw[b], *bb = bias[b], *ub = hu[b], *hpb = hp[b], *ab = a[b], *hb = h[b];
#pragma omp simd
    for (long j = 0; j < H; ++j) {
      T r = sig((xb[j] + bb[j]) + ub[j]), z = sig((xb[H + j] + bb[H + j]) + ub[H + j]);
      T n = tnh((xb[2 * H + j] + bb[2 * H + j]) + r * ub[2 * H + j]);
      ab[j] = r;
      ab[H + j] = z;
      ab[2 * H + j] = n;
      hb[j] = lerp(n, hpb[j], z);
    }
  }
}

// reset-after GRU step backward. Operands: dh, a = [r, z, n], hu, h_prev, g (optional: added to carry),
// dhu (B, 3H) out = dL/d(h U + bias_hu), dn out = dL/d(xw_n), carry out = dh z (+ g),
// so that dL/dh_{t-1} = dhu U^T + carry (one GEMM with the sum folded in).
template <typename T>
void gru_backward(long B, long H, void* const* p, const long* s) {
  const Mat<T> dh{p, s, 0}, a{p, s, 1}, hu{p, s, 2}, hp{p, s, 3}, g{p, s, 4}, dhu{p, s, 5}, dn{p, s, 6},
      carry{p, s, 7};
  for (long b = 0; b < B; ++b) {
    T *dhb = dh[b], *ab = a[b], *ub = hu[b], *hpb = hp[b], *dub = dhu[b], *dnb = dn[b], *cb = carry[b];
    T* gb = g ? g[b] : nullptr;
#pragma omp simd
    for (long j = 0; j < H; ++j) {
      T r = ab[j], z = ab[H + j], n = ab[2 * H + j], d = dhb[j], dnj;
      zn_backward(d, z, n, hpb[j], dub[H + j], dnj);
      dnb[j] = dnj;
      dub[j] = dnj * ub[2 * H + j] * dsig(r);
      dub[2 * H + j] = dnj * r;
      cb[j] = gb ? d * z + gb[j] : d * z;
    }
  }
}

// reset-before GRU, first half of a step. Operands: rz (B, 2H) pre-activations -> sigmoid in place, hd (the
// masked h_{t-1}), rh out = r hd (the left operand of U_n).
template <typename T>
void gru_before_rz(long B, long H, void* const* p, const long* s) {
  const Mat<T> rz{p, s, 0}, hd{p, s, 1}, rh{p, s, 2};
  for (long b = 0; b < B; ++b) {
    T *rb = rz[b], *hdb = hd[b], *rhb = rh[b];
#pragma omp simd
    for (long j = 0; j < 2 * H; ++j) rb[j] = sig(rb[j]);
#pragma omp simd
    for (long j = 0; j < H; ++j) rhb[j] = rb[j] * hdb[j];
  }
}

// second half. Operands: n pre-activation -> tanh in place, h_prev, z, h out = lerp(n, h_{t-1}, z).
template <typename T>
void gru_before_n(long B, long H, void* const* p, const long* s) {
  const Mat<T> n{p, s, 0}, hp{p, s, 1}, z{p, s, 2}, h{p, s, 3};
  for (long b = 0; b < B; ++b) {
    T *nb = n[b], *hpb = hp[b], *zb = z[b], *hb = h[b];
#pragma omp simd
    for (long j = 0; j < H; ++j) {
      T v = tnh(nb[j]);
      nb[j] = v;
      hb[j] = lerp(v, hpb[j], zb[j]);
    }
  }
}

// reset-before GRU backward, before the U_n product. Operands: dh, z, n, h_prev, dz out = dL/d(z pre-act.),
// dn out = dL/d(n pre-activation).
template <typename T>
void gru_before_backward_n(long B, long H, void* const* p, const long* s) {
  const Mat<T> dh{p, s, 0}, z{p, s, 1}, n{p, s, 2}, hp{p, s, 3}, dz{p, s, 4}, dn{p, s, 5};
  for (long b = 0; b < B; ++b) {
    T *dhb = dh[b], *zb = z[b], *nb = n[b], *hpb = hp[b], *dzb = dz[b], *dnb = dn[b];
#pragma omp simd
    for (long j = 0; j < H; ++j) {
      zn_backward(dhb[j], zb[j], nb[j], hpb[j], dzb[j], dnb[j]);
    }
  }
}

// after it. Operands: drh = dL/d(r hd), hd, r, dr out = dL/d(r pre-activation); where carry is given (no
// recurrent dropout): dh, z, g (optional), carry out = drh r + dh z (+ g), so that
// dL/dh_{t-1} = d(rz) U_rz^T + carry.
template <typename T>
void gru_before_backward_r(long B, long H, void* const* p, const long* s) {
  const Mat<T> drh{p, s, 0}, hd{p, s, 1}, r{p, s, 2}, dr{p, s, 3}, dh{p, s, 4}, z{p, s, 5}, g{p, s, 6},
      carry{p, s, 7};
  for (long b = 0; b < B; ++b) {
    T *db = drh[b], *hdb = hd[b], *rb = r[b], *drb = dr[b];
#pragma omp simd
    for (long j = 0; j < H; ++j) drb[j] = db[j] * hdb[j] * dsig(rb[j]);
    if (!carry) continue;
    T *dhb = dh[b], *zb = z[b], *cb = carry[b];
    T* gb = g ? g[b] : nullptr;
#pragma omp simd
    for (long j = 0; j < H; ++j) {
      T v = db[j] * rb[j] + dhb[j] * zb[j];
      cb[j] = gb ? v + gb[j] : v;
    }
  }
}

// --- tLSTM (He et al. 2017), norm=none: the step of cells/tlstm_fused.py after its cross-layer GEMM ----------------
template <typename T>
struct Mat3 {  // operand k of a tLSTM kernel: row (b, n) at p[k] + b * s[2k] + n * s[2k + 1]
  T* p;
  long sb, sn;
  Mat3(void* const* ptrs, const long* strides, int k)
      : p(static_cast<T*>(ptrs[k])), sb(strides[2 * k]), sn(strides[2 * k + 1]) {}
  T* operator()(long b, long n) const { return p + b * sb + n * sn; }
  explicit operator bool() const { return p != nullptr; }
};

// Operands: a (B, N, >= 4M + taps) = A_t: [2 A^g, A^i, A^f, A^o] -> their sigmoids in place, A^q (the memory kernel's
// logits) read; c_prev = C~_{t-1} = -2 C_{t-1}; c out = C~_t; t out = sigmoid(C~_t); h out = H_t = O - 2 O t;
// with the memory-cell convolution (index given): k out (B, N, taps) = softmax(A^q), km out (B, N, N) = each
// location's kernel scattered onto the locations its taps read (border taps that clamp to one location add up),
// cm out = km C~_{t-1}; index (N * taps) int64: n N + the location tap j of location n reads.
// C~_t = src F - 4 sigmoid(2 A^g) I + 2 I with src = cm (or c_prev without the convolution).
template <typename T>
void tlstm_forward(long B, long N, long M, long taps, void* const* p, const long* s) {
  const Mat3<T> a{p, s, 0}, cp{p, s, 1}, c{p, s, 2}, t{p, s, 3}, h{p, s, 4}, k{p, s, 5}, km{p, s, 6}, cm{p, s, 7};
  const int64_t* index = static_cast<const int64_t*>(p[8]);
  for (long b = 0; b < B; ++b) {
    for (long n = 0; n < N; ++n) {
      T* ab = a(b, n);
#pragma omp simd
      for (long j = 0; j < 4 * M; ++j) ab[j] = sig(ab[j]);
    }
    if (index) {
      for (long n = 0; n < N; ++n) {
        const T* q = a(b, n) + 4 * M;
        T *kb = k(b, n), *kmb = km(b, n), mx = q[0], sum = T(0);
        for (long j = 1; j < taps; ++j) mx = q[j] > mx ? q[j] : mx;
        for (long j = 0; j < taps; ++j) sum += (kb[j] = ex(q[j] - mx));
        for (long j = 0; j < taps; ++j) kb[j] /= sum;
        for (long m = 0; m < N; ++m) kmb[m] = T(0);
        for (long j = 0; j < taps; ++j) kmb[index[n * taps + j] - n * N] += kb[j];
      }
      for (long n = 0; n < N; ++n) {
        T *cmb = cm(b, n), *kmb = km(b, n);
        for (long j = 0; j < M; ++j) cmb[j] = T(0);
        for (long m = 0; m < N; ++m) {
          const T w = kmb[m], *cpm = cp(b, m);
#pragma omp simd
          for (long j = 0; j < M; ++j) cmb[j] += w * cpm[j];
        }
      }
    }
    for (long n = 0; n < N; ++n) {
      T *ab = a(b, n), *src = index ? cm(b, n) : cp(b, n), *cb = c(b, n), *tb = t(b, n), *hb = h(b, n);
#pragma omp simd
      for (long j = 0; j < M; ++j) {
        T g = ab[j], i = ab[M + j], f = ab[2 * M + j], o = ab[3 * M + j];
        T cj = src[j] * f + T(-4) * g * i + T(2) * i, tj = sig(cj);
        cb[j] = cj;
        tb[j] = tj;
        hb[j] = o + T(-2) * o * tj;
      }
    }
  }
}

// One step of the tLSTM backward before its GEMM. Operands: dh = dL/dH_t; dc_in = dL/dC_t from step t+1 (or null);
// po, pc (B, N, M), pgif (B, N, 3M): the local derivatives (dL/dA^o = dh po, dL/dC_t += dh pc, dL/dA^{g,i,f} =
// dc pgif); f = F_t; da out (B, N, >= 4M + taps) = dL/dA_t; dc_out = dL/dC_{t-1} (may be dc_in itself); g = an
// outside dL/dC_{t-1} to add (or null); with the memory convolution (index given): c_prev = C_{t-1}, km, k as the
// forward wrote them, dcm (B, N, M) scratch = dL/dconv(C_{t-1}), and dL/dA^q through the softmax into da.
template <typename T>
void tlstm_backward(long B, long N, long M, long taps, void* const* p, const long* s) {
  const Mat3<T> dh{p, s, 0}, dci{p, s, 1}, po{p, s, 2}, pc{p, s, 3}, pgif{p, s, 4}, f{p, s, 5}, da{p, s, 6},
      dco{p, s, 7}, g{p, s, 8}, cp{p, s, 9}, km{p, s, 10}, k{p, s, 11}, dcm{p, s, 12};
  const int64_t* index = static_cast<const int64_t*>(p[13]);
  for (long b = 0; b < B; ++b) {
    for (long n = 0; n < N; ++n) {
      T *dhb = dh(b, n), *dcib = dci ? dci(b, n) : nullptr, *pob = po(b, n), *pcb = pc(b, n), *pgb = pgif(b, n),
        *fb = f(b, n), *dab = da(b, n), *gb = g ? g(b, n) : nullptr;
      T* out = index ? dcm(b, n) : dco(b, n);
#pragma omp simd
      for (long j = 0; j < M; ++j) {
        T d = dhb[j], dc = dcib ? dcib[j] + d * pcb[j] : d * pcb[j];
        dab[3 * M + j] = d * pob[j];
        dab[j] = dc * pgb[j];
        dab[M + j] = dc * pgb[M + j];
        dab[2 * M + j] = dc * pgb[2 * M + j];
        T v = dc * fb[j];
        out[j] = (!index && gb) ? v + gb[j] : v;
      }
    }
    if (!index) continue;
    for (long n = 0; n < N; ++n) {  // dL/dA^q: the softmax backward of the kernel's gradient at its taps
      const T *dcmb = dcm(b, n), *kb = k(b, n);
      T* dq = da(b, n) + 4 * M;
      T ksum = T(0);
      for (long j = 0; j < taps; ++j) {
        const T* cpl = cp(b, index[n * taps + j] - n * N);
        T dk = T(0);
#pragma omp simd reduction(+ : dk)
        for (long m = 0; m < M; ++m) dk += dcmb[m] * cpl[m];
        dq[j] = kb[j] * dk;
        ksum += dq[j];
      }
      for (long j = 0; j < taps; ++j) dq[j] -= kb[j] * ksum;
    }
    for (long m = 0; m < N; ++m) {  // dL/dC_{t-1} = km^T dcm (+ g)
      T *out = dco(b, m), *gb = g ? g(b, m) : nullptr;
      for (long j = 0; j < M; ++j) out[j] = gb ? gb[j] : T(0);
      for (long n = 0; n < N; ++n) {
        const T w = km(b, n)[m], *dcmb = dcm(b, n);
#pragma omp simd
        for (long j = 0; j < M; ++j) out[j] += w * dcmb[j];
      }
    }
  }
}

}  // namespace

// The C entry points <kernel>_f32 and <kernel>_f64. On x86-64 each is built for AVX-512, AVX2 and the baseline
// and the loader picks the one the CPU runs (GCC's function multiversioning), the kernel inlined into each.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TLSTM_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define TLSTM_CLONES
#endif
#define TLSTM_EXPORT(name)                                                                               \
  extern "C" TLSTM_CLONES void name##_f32(long B, long H, void* const* p, const long* s) {             \
    name<float>(B, H, p, s);                                                                           \
  }                                                                                                    \
  extern "C" TLSTM_CLONES void name##_f64(long B, long H, void* const* p, const long* s) {             \
    name<double>(B, H, p, s);                                                                          \
  }

TLSTM_EXPORT(lstm_forward)
TLSTM_EXPORT(lstm_backward)
TLSTM_EXPORT(lstm_forward_t)
TLSTM_EXPORT(lstm_backward_t)
TLSTM_EXPORT(gru_forward)
TLSTM_EXPORT(gru_backward)
TLSTM_EXPORT(gru_before_rz)
TLSTM_EXPORT(gru_before_n)
TLSTM_EXPORT(gru_before_backward_n)
TLSTM_EXPORT(gru_before_backward_r)

#define TLSTM_EXPORT_3D(name)                                                                              \
  extern "C" TLSTM_CLONES void name##_f32(long B, long N, long M, long taps, void* const* p, const long* s) { \
    name<float>(B, N, M, taps, p, s);                                                                    \
  }                                                                                                      \
  extern "C" TLSTM_CLONES void name##_f64(long B, long N, long M, long taps, void* const* p, const long* s) { \
    name<double>(B, N, M, taps, p, s);                                                                   \
  }

TLSTM_EXPORT_3D(tlstm_forward)
TLSTM_EXPORT_3D(tlstm_backward)

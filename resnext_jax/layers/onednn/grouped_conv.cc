// Grouped 2-D convolution for XLA:CPU through the XLA FFI, on oneDNN.
//
// Three FFI handlers, registered by resnext_jax/layers/onednn/build.py:
//
//   resnext_onednn_conv_fwd          y  = conv(x, k)
//   resnext_onednn_conv_bwd_data     dx = conv^T(dy, k)     (input gradient)
//   resnext_onednn_conv_bwd_weights  dk = dconv/dk(x, dy)   (kernel gradient)
//
// Layouts are XLA's row-major ones as jax hands them over: activations NHWC,
// the kernel HWIO with O = groups * (O / groups), group-major, exactly
// flax's `nn.Conv(feature_group_count=G)` kernel. In oneDNN's terms the
// activations are `nhwc` and the grouped kernel, whose logical dimensions are
// (G, O/G, I/G, KH, KW), is `hwigo` (`hwio` for one group). Nothing is copied
// to other layouts on the way in except the kernel, which oneDNN may want in a
// blocked layout of its own (a small reorder per call).
//
// Threading. XLA:CPU runs this handler on one of its intra-op threads and
// gives it that pool (`ffi::ThreadPool`). oneDNN's own threading here is
// OpenMP (the `onednn-cpu-gomp` build): left alone, every XLA thread that
// called oneDNN would start its own OpenMP team as wide as the machine, on top
// of XLA's threads (oversubscription, and OpenMP's spinning threads steal the
// cores XLA runs the rest of the step on). So oneDNN is run single-threaded
// (`SequentialOneDnn`: OpenMP's thread count is 1 on the calling thread while
// it works, and restored after) and the parallelism is ours: the batch is cut
// into as many pieces as XLA's pool has threads, and the pieces run on the
// calling thread and on tasks scheduled on XLA's pool (`ParallelFor`). No
// thread is created besides XLA's own. A batch of one image runs on one core.
//
// Primitives are created once per shape and kept (`Cache`); executing a
// oneDNN primitive from several threads at once is safe, and each thread has
// its own scratch memory (`scratchpad_mode::user`, thread-local buffers).
//
// Errors (a shape that does not add up, a configuration oneDNN cannot run)
// come back to jax as an FFI error naming the problem. The Python side asks
// `resnext_onednn_probe` first, when it lowers a program, and falls back to
// the portable lowering for anything refused there, so a jitted program does
// not fail at run time.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------
// oneDNN single-threaded on the calling thread.

#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
// Resolved from the libgomp that libdnnl itself links (no omp.h needed).
extern "C" int omp_get_max_threads(void);
extern "C" void omp_set_num_threads(int);

// OpenMP's thread count is a per-thread setting: set it to 1 on this thread
// for the scope, so that oneDNN plans and runs its work without a team, and
// put back what was there (this may be a thread of XLA's pool that something
// else uses OpenMP on).
class SequentialOneDnn {
 public:
  SequentialOneDnn() : saved_(omp_get_max_threads()) {
    if (saved_ != 1) omp_set_num_threads(1);
  }
  ~SequentialOneDnn() {
    if (saved_ != 1) omp_set_num_threads(saved_);
  }
  SequentialOneDnn(const SequentialOneDnn&) = delete;
  SequentialOneDnn& operator=(const SequentialOneDnn&) = delete;

 private:
  int saved_;
};
#elif DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_SEQ
class SequentialOneDnn {};
#else
// A TBB or threadpool build would need its own way of staying on one thread
// (a task arena, a threadpool adaptor); the SYCL builds also need an OpenCL
// CPU device. Refused at build time, so the Python side falls back.
#error "resnext_jax's oneDNN kernel needs an OpenMP or sequential CPU build \
of oneDNN (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)"
#endif

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// ---------------------------------------------------------------------------
// Work on XLA's intra-op pool.
//
// Runs fn(0), ..., fn(n - 1) on the calling thread and on up to n - 1 tasks
// scheduled on XLA's pool; returns once all have run. Every thread takes the
// next piece from a shared counter, so a task that starts late (its pool
// thread was busy) finds nothing left and returns at once: the caller waits
// only for pieces already running, never for a task still queued, and cannot
// deadlock on a pool whose threads are all waiting likewise.
// Returns the first error a piece threw, or an empty string.
std::string ParallelFor(ffi::ThreadPool& pool, int64_t n,
                        const std::function<void(int64_t)>& fn) {
  struct Shared {
    int64_t n = 0;
    const std::function<void(int64_t)>* fn = nullptr;  // Valid while pieces
                                                         // are left.
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable all_done;
    int64_t finished = 0;
    std::string error;
  };
  auto shared = std::make_shared<Shared>();
  shared->n = n;
  shared->fn = &fn;
  auto work = [](Shared& s) {
    SequentialOneDnn sequential;
    for (;;) {
      const int64_t i = s.next.fetch_add(1);
      if (i >= s.n) return;
      std::string error;
      try {
        (*s.fn)(i);
      } catch (const dnnl::error& e) {
        error = std::string("oneDNN: ") + e.what();
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(s.mu);
      if (!error.empty() && s.error.empty()) s.error = error;
      if (++s.finished == s.n) s.all_done.notify_all();
    }
  };
  for (int64_t t = 1; t < n; ++t) {
    pool.Schedule([shared, work] { work(*shared); });
  }
  work(*shared);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->finished == shared->n; });
  return shared->error;
}

// Pieces of the batch: as many as XLA's pool has threads, at most one per
// image. Piece i covers images [Start(i), Start(i + 1)).
struct Split {
  Split(int64_t batch, int64_t threads)
      : pieces(std::max<int64_t>(1, std::min(batch, threads))),
        base(batch / pieces),
        extra(batch % pieces) {}
  int64_t Start(int64_t i) const { return i * base + std::min(i, extra); }
  int64_t Size(int64_t i) const { return base + (i < extra ? 1 : 0); }
  int64_t pieces, base, extra;
};

// ---------------------------------------------------------------------------
// The convolution's geometry, from the buffers' shapes and the attributes.

enum Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  dnnl::memory::data_type dtype = dnnl::memory::data_type::f32;
  int64_t n = 0, h = 0, w = 0, c = 0;  // Input, NHWC.
  int64_t ho = 0, wo = 0, o = 0;       // Output, NHWC.
  int64_t kh = 0, kw = 0, groups = 1;
  int64_t sh = 1, sw = 1, pt = 0, pb = 0, pl = 0, pr = 0;

  dnnl::memory::desc Input(int64_t batch) const {
    return {{batch, c, h, w}, dtype, dnnl::memory::format_tag::nhwc};
  }
  dnnl::memory::desc Output(int64_t batch) const {
    return {{batch, o, ho, wo}, dtype, dnnl::memory::format_tag::nhwc};
  }
  dnnl::memory::dims KernelDims() const {
    if (groups == 1) return {o, c, kh, kw};
    return {groups, o / groups, c / groups, kh, kw};
  }
  // The kernel as XLA holds it (HWIO), in `type`.
  dnnl::memory::desc PlainKernel(dnnl::memory::data_type type) const {
    return {KernelDims(), type,
            groups == 1 ? dnnl::memory::format_tag::hwio
                        : dnnl::memory::format_tag::hwigo};
  }
  dnnl::memory::desc AnyKernel(dnnl::memory::data_type type) const {
    return {KernelDims(), type, dnnl::memory::format_tag::any};
  }
  int64_t KernelElements() const { return kh * kw * (c / groups) * o; }
  int64_t InputElements(int64_t batch) const { return batch * h * w * c; }
  int64_t OutputElements(int64_t batch) const { return batch * ho * wo * o; }

  std::string Key(Kind kind, int64_t batch) const {
    std::ostringstream key;
    key << kind << ':' << static_cast<int>(dtype) << ':' << batch << 'x' << h
        << 'x' << w << 'x' << c << "->" << ho << 'x' << wo << 'x' << o << ":k"
        << kh << 'x' << kw << ":g" << groups << ":s" << sh << 'x' << sw
        << ":p" << pt << ',' << pb << ',' << pl << ',' << pr;
    return key.str();
  }

  // An empty string if the shapes describe one convolution, else why not.
  std::string Check() const {
    std::ostringstream why;
    if (n < 1 || h < 1 || w < 1 || c < 1 || o < 1 || kh < 1 || kw < 1) {
      why << "every dimension must be positive";
    } else if (groups < 1 || c % groups || o % groups) {
      why << "groups (=" << groups << ") must divide the input channels (="
          << c << ") and the output channels (=" << o << ")";
    } else if (sh < 1 || sw < 1 || pt < 0 || pb < 0 || pl < 0 || pr < 0) {
      why << "strides must be positive and paddings non-negative";
    } else if (ho != (h + pt + pb - kh) / sh + 1 ||
               wo != (w + pl + pr - kw) / sw + 1 || h + pt + pb < kh ||
               w + pl + pr < kw) {
      why << "an input of " << h << 'x' << w << " with a " << kh << 'x' << kw
          << " kernel, strides " << sh << 'x' << sw << " and padding (" << pt
          << ',' << pb << "),(" << pl << ',' << pr << ") gives "
          << (h + pt + pb - kh) / sh + 1 << 'x' << (w + pl + pr - kw) / sw + 1
          << ", not " << ho << 'x' << wo;
    }
    return why.str();
  }
};

std::optional<dnnl::memory::data_type> DnnlType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32:
      return dnnl::memory::data_type::f32;
    case ffi::DataType::BF16:
      return dnnl::memory::data_type::bf16;
    default:
      return std::nullopt;
  }
}

// ---------------------------------------------------------------------------
// Primitives, created once per geometry and batch size.

struct Entry {
  dnnl::primitive conv;
  // The layout of the kernel (forward, input gradient) or of the kernel
  // gradient (always f32) that the primitive was made for, and the reorders
  // between it and the plain HWIO layout where they differ.
  dnnl::memory::desc kernel;
  std::optional<dnnl::reorder> kernel_in;   // Plain -> `kernel`.
  std::optional<dnnl::reorder> kernel_out;  // `kernel` -> plain f32.
  size_t scratch_bytes = 0;
  std::string impl;  // oneDNN's implementation, for the probe's report.
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g,
                                                      int64_t batch) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, g.Input(batch),
      g.AnyKernel(g.dtype), g.Output(batch), {g.sh, g.sw}, {g.pt, g.pl},
      {g.pb, g.pr}, UserScratchpad());
}

std::shared_ptr<Entry> MakeEntry(const Geometry& g, Kind kind, int64_t batch) {
  auto entry = std::make_shared<Entry>();
  auto& engine = Engine();
  const auto hint = ForwardDesc(g, batch);
  const auto plain = g.PlainKernel(g.dtype);
  if (kind == kForward) {
    entry->conv = dnnl::convolution_forward(hint);
    entry->kernel = hint.weights_desc();
    entry->scratch_bytes = hint.scratchpad_desc().get_size();
    entry->impl = hint.impl_info_str();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        engine, dnnl::algorithm::convolution_direct, g.Input(batch),
        g.AnyKernel(g.dtype), g.Output(batch), {g.sh, g.sw}, {g.pt, g.pl},
        {g.pb, g.pr}, hint, UserScratchpad());
    entry->conv = dnnl::convolution_backward_data(pd);
    entry->kernel = pd.weights_desc();
    entry->scratch_bytes = pd.scratchpad_desc().get_size();
    entry->impl = pd.impl_info_str();
  } else {
    // The kernel gradient is made in f32 whatever the activations' type:
    // the pieces' partial gradients are summed in f32, then rounded once.
    dnnl::convolution_backward_weights::primitive_desc pd(
        engine, dnnl::algorithm::convolution_direct, g.Input(batch),
        g.AnyKernel(dnnl::memory::data_type::f32), g.Output(batch),
        {g.sh, g.sw}, {g.pt, g.pl}, {g.pb, g.pr}, hint, UserScratchpad());
    entry->conv = dnnl::convolution_backward_weights(pd);
    entry->kernel = pd.diff_weights_desc();
    entry->scratch_bytes = pd.scratchpad_desc().get_size();
    entry->impl = pd.impl_info_str();
    const auto plain_f32 = g.PlainKernel(dnnl::memory::data_type::f32);
    if (entry->kernel != plain_f32) {
      entry->kernel_out = dnnl::reorder(
          dnnl::reorder::primitive_desc(engine, entry->kernel, engine,
                                        plain_f32));
    }
    return entry;
  }
  if (entry->kernel != plain) {
    entry->kernel_in = dnnl::reorder(
        dnnl::reorder::primitive_desc(engine, plain, engine, entry->kernel));
  }
  return entry;
}

// Primitives by geometry and batch size. A program has a handful of shapes;
// the bound only keeps a process that sweeps shapes from growing forever.
class Cache {
 public:
  std::shared_ptr<Entry> Get(const Geometry& g, Kind kind, int64_t batch) {
    const std::string key = g.Key(kind, batch);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = entries_.find(key);
      if (it != entries_.end()) return it->second;
    }
    // Made outside the lock: two threads may both make one; either is fine.
    auto entry = MakeEntry(g, kind, batch);
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.size() >= kMaxEntries) entries_.clear();
    return entries_.emplace(key, std::move(entry)).first->second;
  }

 private:
  static constexpr size_t kMaxEntries = 1024;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Entry>> entries_;
};

Cache& Primitives() {
  static Cache* cache = new Cache();  // Never destroyed: used at exit.
  return *cache;
}

// ---------------------------------------------------------------------------
// Memory.

// A 64-byte aligned buffer that only grows.
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Per thread: oneDNN's scratchpad, and a piece's kernel gradient in
// oneDNN's layout before it is reordered.
thread_local Buffer tls_scratch;
thread_local Buffer tls_kernel_grad;

dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

size_t ByteWidth(dnnl::memory::data_type type) {
  return type == dnnl::memory::data_type::bf16 ? 2 : 4;
}

char* Offset(void* base, int64_t elements, dnnl::memory::data_type type) {
  return static_cast<char*>(base) + elements * ByteWidth(type);
}

void Execute(const Entry& entry,
             std::unordered_map<int, dnnl::memory> args) {
  auto& engine = Engine();
  if (entry.scratch_bytes > 0) {
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 dnnl::memory({{static_cast<int64_t>(entry.scratch_bytes)},
                               dnnl::memory::data_type::u8,
                               dnnl::memory::format_tag::x},
                              engine, tls_scratch.Get(entry.scratch_bytes)));
  }
  auto& stream = ThreadStream();
  entry.conv.execute(stream, args);
  stream.wait();
}

// Round-to-nearest-even f32 -> bf16, as XLA converts.
uint16_t ToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// The kernel in each of the layouts the pieces' primitives want, reordered
// once per call. Returns a pointer per entry (the caller's own kernel where
// no reorder is needed); `owned` keeps the reordered copies alive.
std::vector<void*> KernelsFor(
    const std::vector<std::shared_ptr<Entry>>& entries, const Geometry& g,
    void* kernel, std::vector<std::unique_ptr<Buffer>>& owned) {
  std::vector<void*> out;
  auto& engine = Engine();
  for (const auto& entry : entries) {
    if (!entry->kernel_in) {
      out.push_back(kernel);
      continue;
    }
    owned.push_back(std::make_unique<Buffer>());
    void* dst = owned.back()->Get(entry->kernel.get_size());
    dnnl::memory src_mem(g.PlainKernel(g.dtype), engine, kernel);
    dnnl::memory dst_mem(entry->kernel, engine, dst);
    auto& stream = ThreadStream();
    entry->kernel_in->execute(stream, src_mem, dst_mem);
    stream.wait();
    out.push_back(dst);
  }
  return out;
}

// The pieces' primitives: entries[0] for the larger pieces, entries[1] (if
// the batch does not divide evenly) for the others.
std::vector<std::shared_ptr<Entry>> EntriesFor(const Geometry& g, Kind kind,
                                               const Split& split) {
  std::vector<std::shared_ptr<Entry>> entries;
  entries.push_back(Primitives().Get(g, kind, split.Size(0)));
  if (split.extra != 0) {
    entries.push_back(Primitives().Get(g, kind, split.base));
  }
  return entries;
}

size_t EntryIndex(const Split& split, int64_t piece) {
  return (split.extra != 0 && piece >= split.extra) ? 1 : 0;
}

// ---------------------------------------------------------------------------
// The three computations.

void Forward(ffi::ThreadPool& pool, const Geometry& g, void* x, void* kernel,
             void* y) {
  const Split split(g.n, pool.num_threads());
  auto entries = EntriesFor(g, kForward, split);
  std::vector<std::unique_ptr<Buffer>> owned;
  auto kernels = KernelsFor(entries, g, kernel, owned);
  auto& engine = Engine();
  std::string error = ParallelFor(pool, split.pieces, [&](int64_t i) {
    const size_t e = EntryIndex(split, i);
    const int64_t start = split.Start(i), size = split.Size(i);
    Execute(*entries[e],
            {{DNNL_ARG_SRC,
              dnnl::memory(g.Input(size), engine,
                           Offset(x, g.InputElements(start), g.dtype))},
             {DNNL_ARG_WEIGHTS,
              dnnl::memory(entries[e]->kernel, engine, kernels[e])},
             {DNNL_ARG_DST,
              dnnl::memory(g.Output(size), engine,
                           Offset(y, g.OutputElements(start), g.dtype))}});
  });
  if (!error.empty()) throw std::runtime_error(error);
}

void BackwardData(ffi::ThreadPool& pool, const Geometry& g, void* dy,
                  void* kernel, void* dx) {
  const Split split(g.n, pool.num_threads());
  auto entries = EntriesFor(g, kBackwardData, split);
  std::vector<std::unique_ptr<Buffer>> owned;
  auto kernels = KernelsFor(entries, g, kernel, owned);
  auto& engine = Engine();
  std::string error = ParallelFor(pool, split.pieces, [&](int64_t i) {
    const size_t e = EntryIndex(split, i);
    const int64_t start = split.Start(i), size = split.Size(i);
    Execute(*entries[e],
            {{DNNL_ARG_DIFF_DST,
              dnnl::memory(g.Output(size), engine,
                           Offset(dy, g.OutputElements(start), g.dtype))},
             {DNNL_ARG_WEIGHTS,
              dnnl::memory(entries[e]->kernel, engine, kernels[e])},
             {DNNL_ARG_DIFF_SRC,
              dnnl::memory(g.Input(size), engine,
                           Offset(dx, g.InputElements(start), g.dtype))}});
  });
  if (!error.empty()) throw std::runtime_error(error);
}

void BackwardWeights(ffi::ThreadPool& pool, const Geometry& g, void* x,
                     void* dy, void* dk, dnnl::memory::data_type dk_type) {
  const Split split(g.n, pool.num_threads());
  auto entries = EntriesFor(g, kBackwardWeights, split);
  auto& engine = Engine();
  const int64_t elements = g.KernelElements();
  const auto plain_f32 = g.PlainKernel(dnnl::memory::data_type::f32);
  // One f32 partial gradient per piece, in the plain layout, summed below;
  // a single f32 piece writes straight into the output.
  const bool direct =
      split.pieces == 1 && dk_type == dnnl::memory::data_type::f32;
  std::vector<float> partials(direct ? 0 : split.pieces * elements);
  std::string error = ParallelFor(pool, split.pieces, [&](int64_t i) {
    const Entry& entry = *entries[EntryIndex(split, i)];
    const int64_t start = split.Start(i), size = split.Size(i);
    void* plain = direct ? dk : partials.data() + i * elements;
    void* out = entry.kernel_out ? tls_kernel_grad.Get(entry.kernel.get_size())
                                 : plain;
    dnnl::memory out_mem(entry.kernel, engine, out);
    Execute(entry,
            {{DNNL_ARG_SRC,
              dnnl::memory(g.Input(size), engine,
                           Offset(x, g.InputElements(start), g.dtype))},
             {DNNL_ARG_DIFF_DST,
              dnnl::memory(g.Output(size), engine,
                           Offset(dy, g.OutputElements(start), g.dtype))},
             {DNNL_ARG_DIFF_WEIGHTS, out_mem}});
    if (entry.kernel_out) {
      dnnl::memory plain_mem(plain_f32, engine, plain);
      auto& stream = ThreadStream();
      entry.kernel_out->execute(stream, out_mem, plain_mem);
      stream.wait();
    }
  });
  if (!error.empty()) throw std::runtime_error(error);
  if (direct) return;
  for (int64_t p = 1; p < split.pieces; ++p) {
    const float* part = partials.data() + p * elements;
    for (int64_t j = 0; j < elements; ++j) partials[j] += part[j];
  }
  if (dk_type == dnnl::memory::data_type::f32) {
    std::memcpy(dk, partials.data(), elements * sizeof(float));
  } else {
    auto* out = static_cast<uint16_t*>(dk);
    for (int64_t j = 0; j < elements; ++j) out[j] = ToBfloat16(partials[j]);
  }
}

// ---------------------------------------------------------------------------
// The FFI handlers: shapes and attributes to a Geometry, then the work.

struct Attrs {
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
      groups;
};

// Fills the parts of the geometry every handler shares.
void SetAttrs(Geometry& g, const Attrs& a) {
  g.sh = a.stride_h;
  g.sw = a.stride_w;
  g.pt = a.pad_top;
  g.pb = a.pad_bottom;
  g.pl = a.pad_left;
  g.pr = a.pad_right;
  g.groups = a.groups;
}

// `what` (NHWC activations or an HWIO kernel) must be 4-D.
std::string Rank4(ffi::AnyBuffer::Dimensions dims, const char* what) {
  if (dims.size() == 4) return "";
  return std::string(what) + " must have rank 4, got rank " +
         std::to_string(dims.size());
}

ffi::Error Run(const char* name, const std::function<void()>& body) {
  try {
    SequentialOneDnn sequential;
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string(name) + ": oneDNN: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(name) + ": " + e.what());
  }
}

ffi::Error ConvForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                           ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y,
                           int64_t stride_h, int64_t stride_w, int64_t pad_top,
                           int64_t pad_bottom, int64_t pad_left,
                           int64_t pad_right, int64_t groups) {
  for (const auto& [dims, what] :
       {std::pair{x.dimensions(), "x"}, {kernel.dimensions(), "kernel"},
        {y->dimensions(), "y"}}) {
    if (auto why = Rank4(dims, what); !why.empty()) {
      return ffi::Error::InvalidArgument("resnext_onednn_conv_fwd: " + why);
    }
  }
  auto type = DnnlType(x.element_type());
  if (!type || kernel.element_type() != x.element_type() ||
      y->element_type() != x.element_type()) {
    return ffi::Error::InvalidArgument(
        "resnext_onednn_conv_fwd: x, kernel and y must all be float32 or all "
        "bfloat16");
  }
  Geometry g;
  g.dtype = *type;
  SetAttrs(g, {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
               groups});
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  g.n = xd[0], g.h = xd[1], g.w = xd[2], g.c = xd[3];
  g.kh = kd[0], g.kw = kd[1], g.o = kd[3];
  g.ho = yd[1], g.wo = yd[2];
  std::string why = g.Check();
  if (why.empty() && (kd[2] * groups != g.c || yd[0] != g.n || yd[3] != g.o)) {
    why = "the kernel, x and y shapes do not match";
  }
  if (!why.empty()) {
    return ffi::Error::InvalidArgument("resnext_onednn_conv_fwd: " + why);
  }
  return Run("resnext_onednn_conv_fwd", [&] {
    Forward(pool, g, x.untyped_data(), kernel.untyped_data(),
            y->untyped_data());
  });
}

ffi::Error ConvBackwardDataImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy,
                                ffi::AnyBuffer kernel,
                                ffi::Result<ffi::AnyBuffer> dx,
                                int64_t stride_h, int64_t stride_w,
                                int64_t pad_top, int64_t pad_bottom,
                                int64_t pad_left, int64_t pad_right,
                                int64_t groups) {
  for (const auto& [dims, what] :
       {std::pair{dy.dimensions(), "dy"}, {kernel.dimensions(), "kernel"},
        {dx->dimensions(), "dx"}}) {
    if (auto why = Rank4(dims, what); !why.empty()) {
      return ffi::Error::InvalidArgument("resnext_onednn_conv_bwd_data: " +
                                         why);
    }
  }
  auto type = DnnlType(dy.element_type());
  if (!type || kernel.element_type() != dy.element_type() ||
      dx->element_type() != dy.element_type()) {
    return ffi::Error::InvalidArgument(
        "resnext_onednn_conv_bwd_data: dy, kernel and dx must all be float32 "
        "or all bfloat16");
  }
  Geometry g;
  g.dtype = *type;
  SetAttrs(g, {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
               groups});
  auto dyd = dy.dimensions(), kd = kernel.dimensions(),
       dxd = dx->dimensions();
  g.n = dxd[0], g.h = dxd[1], g.w = dxd[2], g.c = dxd[3];
  g.kh = kd[0], g.kw = kd[1], g.o = kd[3];
  g.ho = dyd[1], g.wo = dyd[2];
  std::string why = g.Check();
  if (why.empty() &&
      (kd[2] * groups != g.c || dyd[0] != g.n || dyd[3] != g.o)) {
    why = "the kernel, dy and dx shapes do not match";
  }
  if (!why.empty()) {
    return ffi::Error::InvalidArgument("resnext_onednn_conv_bwd_data: " + why);
  }
  return Run("resnext_onednn_conv_bwd_data", [&] {
    BackwardData(pool, g, dy.untyped_data(), kernel.untyped_data(),
                 dx->untyped_data());
  });
}

ffi::Error ConvBackwardWeightsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                   ffi::AnyBuffer dy,
                                   ffi::Result<ffi::AnyBuffer> dk,
                                   int64_t stride_h, int64_t stride_w,
                                   int64_t pad_top, int64_t pad_bottom,
                                   int64_t pad_left, int64_t pad_right,
                                   int64_t groups) {
  for (const auto& [dims, what] :
       {std::pair{x.dimensions(), "x"}, {dy.dimensions(), "dy"},
        {dk->dimensions(), "dk"}}) {
    if (auto why = Rank4(dims, what); !why.empty()) {
      return ffi::Error::InvalidArgument(
          "resnext_onednn_conv_bwd_weights: " + why);
    }
  }
  auto type = DnnlType(x.element_type());
  auto dk_type = DnnlType(dk->element_type());
  if (!type || dy.element_type() != x.element_type() || !dk_type) {
    return ffi::Error::InvalidArgument(
        "resnext_onednn_conv_bwd_weights: x and dy must both be float32 or "
        "both bfloat16, and dk float32 or bfloat16");
  }
  Geometry g;
  g.dtype = *type;
  SetAttrs(g, {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
               groups});
  auto xd = x.dimensions(), dyd = dy.dimensions(), kd = dk->dimensions();
  g.n = xd[0], g.h = xd[1], g.w = xd[2], g.c = xd[3];
  g.kh = kd[0], g.kw = kd[1], g.o = kd[3];
  g.ho = dyd[1], g.wo = dyd[2];
  std::string why = g.Check();
  if (why.empty() &&
      (kd[2] * groups != g.c || dyd[0] != g.n || dyd[3] != g.o)) {
    why = "the x, dy and dk shapes do not match";
  }
  if (!why.empty()) {
    return ffi::Error::InvalidArgument("resnext_onednn_conv_bwd_weights: " +
                                       why);
  }
  return Run("resnext_onednn_conv_bwd_weights", [&] {
    BackwardWeights(pool, g, x.untyped_data(), dy.untyped_data(),
                    dk->untyped_data(), *dk_type);
  });
}

}  // namespace

// All three take two arrays and return one, with the same attributes:
// forward (x, kernel) -> y, input gradient (dy, kernel) -> dx, kernel
// gradient (x, dy) -> dk.
#define RESNEXT_CONV_BINDING                        \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::AnyBuffer>()                        \
      .Arg<ffi::AnyBuffer>()                        \
      .Ret<ffi::AnyBuffer>()                        \
      .Attr<int64_t>("stride_h")                    \
      .Attr<int64_t>("stride_w")                    \
      .Attr<int64_t>("pad_top")                     \
      .Attr<int64_t>("pad_bottom")                  \
      .Attr<int64_t>("pad_left")                    \
      .Attr<int64_t>("pad_right")                   \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnextOnednnConvFwd, ConvForwardImpl,
                              RESNEXT_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnextOnednnConvBwdData, ConvBackwardDataImpl,
                              RESNEXT_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnextOnednnConvBwdWeights,
                              ConvBackwardWeightsImpl,
                              RESNEXT_CONV_BINDING);

// Asked through ctypes when a program is lowered, before a call to the
// kernel goes into it: can oneDNN make the primitive `kind` (0 forward,
// 1 input gradient, 2 kernel gradient) for this convolution on this CPU?
// `dims`: n, h, w, c, ho, wo, o, kh, kw, groups, stride_h, stride_w,
// pad_top, pad_bottom, pad_left, pad_right; `bfloat16`: 0 for float32.
// Returns 0 and oneDNN's implementation's name in `message`, or 1 and why
// not.
extern "C" __attribute__((visibility("default"))) int resnext_onednn_probe(
    int kind, int bfloat16, const int64_t* dims, char* message,
    int64_t message_size) {
  std::string text;
  int status = 0;
  try {
    SequentialOneDnn sequential;
    Geometry g;
    g.dtype = bfloat16 ? dnnl::memory::data_type::bf16
                       : dnnl::memory::data_type::f32;
    g.n = dims[0], g.h = dims[1], g.w = dims[2], g.c = dims[3];
    g.ho = dims[4], g.wo = dims[5], g.o = dims[6];
    g.kh = dims[7], g.kw = dims[8], g.groups = dims[9];
    g.sh = dims[10], g.sw = dims[11];
    g.pt = dims[12], g.pb = dims[13], g.pl = dims[14], g.pr = dims[15];
    text = g.Check();
    if (kind < kForward || kind > kBackwardWeights) text = "unknown kind";
    if (text.empty()) {
      text = Primitives().Get(g, static_cast<Kind>(kind), g.n)->impl;
    } else {
      status = 1;
    }
  } catch (const dnnl::error& e) {
    text = std::string("oneDNN: ") + e.what();
    status = 1;
  } catch (const std::exception& e) {
    text = e.what();
    status = 1;
  }
  if (message_size > 0) {
    std::snprintf(message, message_size, "%s", text.c_str());
  }
  return status;
}

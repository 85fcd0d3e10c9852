#include "core/comm.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if MMDIT_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "core/errors.h"

namespace mmdit {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

namespace {

// Named groups of one communicator, each made once: a group asked for again is the one made the first time.
class Groups {
 public:
  // make(this rank's index in members, members.size()) makes the group's communicator.
  template <class Make>
  std::shared_ptr<Communicator> get(const std::vector<int>& members, int rank, const std::string& name, Make make) {
    if (auto it = made_.find(name); it != made_.end()) return it->second;
    const auto at = std::find(members.begin(), members.end(), rank);
    if (at == members.end()) throw std::logic_error("communicator group " + name + ": this rank is not a member");
    return made_[name] = make(int(at - members.begin()), int(members.size()));
  }

 private:
  std::map<std::string, std::shared_ptr<Communicator>> made_;
};

// --- threads of one process ---------------------------------------------------------------------------

// What the threads of one group share: a slot per rank and a reusable barrier.
struct ThreadHub {
  explicit ThreadHub(int n) : world(n), slots(size_t(n)) {}
  const int world;
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<at::Tensor> slots;
  std::map<std::string, std::shared_ptr<ThreadHub>> groups;  // sub-groups by name

  void barrier() {
    std::unique_lock<std::mutex> lock(m);
    const uint64_t gen = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

class ThreadComm : public Communicator {
 public:
  ThreadComm(int rank, std::shared_ptr<ThreadHub> hub) : rank_(rank), hub_(std::move(hub)) {}
  int rank() const override { return rank_; }
  int size() const override { return hub_->world; }
  std::string kind() const override { return "threads"; }

  at::Tensor all_gather(const at::Tensor& x) override {
    std::vector<at::Tensor> all = exchange(x);
    return at::cat(all, 0);
  }
  at::Tensor all_to_all(const at::Tensor& x) override {
    check_chunks(x, size());
    std::vector<at::Tensor> all = exchange(x);
    std::vector<at::Tensor> mine;
    for (const auto& t : all) mine.push_back(t.select(0, rank_));
    return at::stack(mine, 0);
  }
  void barrier() override { hub_->barrier(); }
  std::shared_ptr<Communicator> group(const std::vector<int>& members, const std::string& name) override {
    return groups_.get(members, rank_, name, [&](int index, int n) {
      std::lock_guard<std::mutex> lock(hub_->m);  // the group's hub is shared by its member threads
      auto& sub = hub_->groups[name];
      if (!sub) sub = std::make_shared<ThreadHub>(n);
      return std::make_shared<ThreadComm>(index, sub);
    });
  }

  static void check_chunks(const at::Tensor& x, int n) {
    if (x.dim() == 0 || x.size(0) != n)
      throw std::logic_error("all_to_all: dim 0 must be the group size " + std::to_string(n));
  }

 private:
  // Every rank's tensor (copies, so that a rank may overwrite its own afterwards).
  std::vector<at::Tensor> exchange(const at::Tensor& x) {
    hub_->slots[size_t(rank_)] = x;
    hub_->barrier();
    std::vector<at::Tensor> all;
    for (const auto& t : hub_->slots) all.push_back(t.clone());
    hub_->barrier();
    return all;
  }

  int rank_;
  std::shared_ptr<ThreadHub> hub_;
  Groups groups_;
};

// --- bytes through the rendezvous store (CPU processes) ---------------------------------------------------

std::vector<uint8_t> to_bytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous().cpu();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + c.nbytes());
}

at::Tensor from_bytes(const std::vector<uint8_t>& b, const at::Tensor& like) {
  at::Tensor t = at::empty(like.sizes(), like.options().device(at::kCPU));
  if (b.size() != t.nbytes()) throw std::runtime_error("store communicator: a rank sent a tensor of another size");
  std::memcpy(t.data_ptr(), b.data(), b.size());
  return t.to(like.device());
}

class StoreComm : public Communicator {
 public:
  StoreComm(c10::intrusive_ptr<c10d::Store> store, int rank, int world)
      : store_(std::move(store)), rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int size() const override { return world_; }
  std::string kind() const override { return "store"; }

  at::Tensor all_gather(const at::Tensor& x) override {
    const std::string base = next();
    store_->set(base + "/" + std::to_string(rank_), to_bytes(x));
    std::vector<at::Tensor> all;
    for (int i = 0; i < world_; ++i) all.push_back(from_bytes(store_->get(base + "/" + std::to_string(i)), x));
    forget({"/" + std::to_string(rank_)});
    return at::cat(all, 0);
  }
  at::Tensor all_to_all(const at::Tensor& x) override {
    ThreadComm::check_chunks(x, world_);
    const std::string base = next();
    std::vector<std::string> mine;
    for (int j = 0; j < world_; ++j) {
      mine.push_back("/" + std::to_string(rank_) + ">" + std::to_string(j));
      store_->set(base + mine.back(), to_bytes(x.select(0, j)));
    }
    std::vector<at::Tensor> got;
    const at::Tensor like = x.select(0, 0);
    for (int i = 0; i < world_; ++i)
      got.push_back(from_bytes(store_->get(base + "/" + std::to_string(i) + ">" + std::to_string(rank_)), like));
    forget(mine);
    return at::stack(got, 0);
  }
  void barrier() override { all_gather(at::zeros({1})); }
  std::shared_ptr<Communicator> group(const std::vector<int>& members, const std::string& name) override {
    return groups_.get(members, rank_, name, [&](int index, int n) {
      return std::make_shared<StoreComm>(c10::make_intrusive<c10d::PrefixStore>(name, store_), index, n);
    });
  }

 private:
  std::string next() { return "c" + std::to_string(seq_++); }
  // A rank that has reached collective s has read every key of s - 1, so keys of s - 2 are nobody's any more.
  void forget(const std::vector<std::string>& suffixes) {
    for (const auto& k : stale_) store_->deleteKey(k);
    stale_.clear();
    std::swap(stale_, pending_);
    for (const auto& s : suffixes) pending_.push_back("c" + std::to_string(seq_ - 1) + s);
  }

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, world_;
  uint64_t seq_ = 0;
  std::vector<std::string> pending_, stale_;
  Groups groups_;
};

#if MMDIT_HAVE_NCCL
// --- NCCL (c10d::ProcessGroupNCCL) -------------------------------------------------------------------------

class NcclComm : public Communicator {
 public:
  NcclComm(c10::intrusive_ptr<c10d::Store> store, int rank, int world)
      : store_(store), rank_(rank), world_(world),
        pg_(c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world)) {}
  ~NcclComm() override {
    try {
      pg_->shutdown();
    } catch (...) {
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return world_; }
  std::string kind() const override { return "nccl"; }

  at::Tensor all_gather(const at::Tensor& x) override {
    at::Tensor in = x.contiguous();
    std::vector<int64_t> shape = in.sizes().vec();
    shape[0] *= world_;
    at::Tensor out = at::empty(shape, in.options());
    pg_->_allgather_base(out, in)->wait();
    return out;
  }
  at::Tensor all_to_all(const at::Tensor& x) override {
    ThreadComm::check_chunks(x, world_);
    at::Tensor in = x.contiguous();
    at::Tensor out = at::empty_like(in);
    std::vector<int64_t> equal;  // empty: equal splits along dim 0
    pg_->alltoall_base(out, in, equal, equal)->wait();
    return out;
  }
  void barrier() override { all_gather(at::zeros({1}, at::TensorOptions().device(at::kCUDA))); }
  std::shared_ptr<Communicator> group(const std::vector<int>& members, const std::string& name) override {
    // Made once and kept: a new NCCL communicator costs its set-up at the first collective, and the store keys of
    // a group's name belong to its first communicator.
    return groups_.get(members, rank_, name, [&](int index, int n) {
      return std::make_shared<NcclComm>(c10::make_intrusive<c10d::PrefixStore>(name, store_), index, n);
    });
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, world_;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
  Groups groups_;
};
#endif

int env_int(const char* name, int fallback, int min) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end || x < min || x > 1 << 20)
    throw UsageError(std::string(name) + "=" + v + ": expected an integer of at least " + std::to_string(min));
  return int(x);
}

}  // namespace

std::vector<std::shared_ptr<Communicator>> make_thread_comms(int world) {
  auto hub = std::make_shared<ThreadHub>(world);
  std::vector<std::shared_ptr<Communicator>> out;
  for (int r = 0; r < world; ++r) out.push_back(std::make_shared<ThreadComm>(r, hub));
  return out;
}

Rendezvous Rendezvous::from_env() {
  Rendezvous rv;
  rv.world = env_int("WORLD_SIZE", 1, 1);
  rv.rank = env_int("RANK", 0, 0);
  rv.local_rank = env_int("LOCAL_RANK", rv.rank, 0);
  if (rv.rank >= rv.world)
    throw UsageError("RANK=" + std::to_string(rv.rank) + ": must be below WORLD_SIZE=" + std::to_string(rv.world));
  if (const char* h = std::getenv("MASTER_ADDR"); h && *h) rv.host = h;
  rv.port = env_int("MASTER_PORT", 29500, 1);
  if (rv.port > 65535) throw UsageError("MASTER_PORT=" + std::to_string(rv.port) + ": not a port");
  rv.timeout = std::chrono::seconds(env_int("MMDIT_RENDEZVOUS_TIMEOUT", 60, 1));
  rv.hosted = env_int("MMDIT_STORE_HOSTED", 0, 0) != 0;
  return rv;
}

std::shared_ptr<Store> connect_store(const Rendezvous& rv) {
  c10d::TCPStoreOptions o;
  o.port = uint16_t(rv.port);
  o.isServer = rv.rank == 0 && !rv.hosted;
  o.numWorkers = size_t(rv.world);  // every rank checks in (a client without it does not), the server waits for all
  o.waitWorkers = true;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(rv.timeout);
  auto s = std::make_shared<Store>();
  const std::string where = "rendezvous at " + rv.host + ":" + std::to_string(rv.port) + " (rank " +
                            std::to_string(rv.rank) + " of " + std::to_string(rv.world) + ")";
  // c10d logs each failed connection attempt; the one line below says it all.
  if (FLAGS_caffe2_log_level < 3) FLAGS_caffe2_log_level = 3;
  try {
    s->store = c10::make_intrusive<c10d::TCPStore>(rv.host, o);
    // Every rank checks in, so that a rank that cannot reach the others fails here, within the timeout.
    s->store->add("mmdit/arrived", 1);
    std::vector<std::string> keys;
    s->store->set("mmdit/rank" + std::to_string(rv.rank), std::string("1"));
    for (int r = 0; r < rv.world; ++r) keys.push_back("mmdit/rank" + std::to_string(r));
    s->store->wait(keys, o.timeout);
  } catch (const c10::Error& e) {
    throw UsageError(where + ": the ranks did not meet within " + std::to_string(rv.timeout.count()) +
                     " s (MMDIT_RENDEZVOUS_TIMEOUT): " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw UsageError(where + ": the ranks did not meet within " + std::to_string(rv.timeout.count()) +
                     " s (MMDIT_RENDEZVOUS_TIMEOUT): " + e.what());
  }
  return s;
}

std::shared_ptr<Store> serve_store(int& port) {
  c10d::TCPStoreOptions o;
  o.port = 0;  // any free port, kept bound from here on
  o.isServer = true;
  o.waitWorkers = false;
  auto s = std::make_shared<Store>();
  auto tcp = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  port = tcp->getPort();
  s->store = tcp;
  return s;
}

int64_t store_add(Store& s, const std::string& key, int64_t value) { return s.store->add(key, value); }
void store_push(Store& s, const std::string& queue, const std::string& value) {
  s.store->queuePush(queue, std::vector<uint8_t>(value.begin(), value.end()));
}
bool store_pop(Store& s, const std::string& queue, std::string& value) {
  if (s.store->queueLen(queue) == 0) return false;
  const auto bytes = s.store->queuePop(queue, /*block=*/false);
  value.assign(bytes.begin(), bytes.end());
  return true;
}

bool nccl_available() { return MMDIT_HAVE_NCCL != 0; }

std::shared_ptr<Communicator> make_process_comm(const std::shared_ptr<Store>& store, const Rendezvous& rv,
                                                const std::string& device) {
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("comm", store->store);
  if (device.rfind("cuda", 0) != 0) return std::make_shared<StoreComm>(prefixed, rv.rank, rv.world);
#if MMDIT_HAVE_NCCL
  const size_t colon = device.find(':');
  c10::cuda::set_device(c10::DeviceIndex(colon == std::string::npos ? 0 : std::stoi(device.substr(colon + 1))));
  return std::make_shared<NcclComm>(prefixed, rv.rank, rv.world);
#else
  throw UsageError("--device " + device + ": this mmdit was built without NCCL: several GPUs are unavailable");
#endif
}

}  // namespace mmdit

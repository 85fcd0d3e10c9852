// The communicator under one generation spread over several devices (core/parallel.h): the few collectives
// CFG-parallel and Ulysses need, behind one small interface with three implementations:
//   - NCCL (c10d::ProcessGroupNCCL, the engine LibTorch ships), one process per GPU: the real one;
//   - a c10d TCPStore (bytes through the rendezvous store), for CPU processes: slow, for tests and debugging;
//   - threads of one process, for tests of the parallel arithmetic.
// Every rank calls every collective in the same order with tensors of the same shape.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace mmdit {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank's x, concatenated along dim 0 in rank order: [size * x.size(0), ...].
  virtual at::Tensor all_gather(const at::Tensor& x) = 0;
  // x: [size, ...]. Chunk i goes to rank i; the result's chunk i came from rank i.
  virtual at::Tensor all_to_all(const at::Tensor& x) = 0;
  virtual void barrier() = 0;
  // A communicator over the ranks `members` (in this order; this rank among them). Every member calls it with
  // the same list, in the same order relative to other collectives; `name` tells groups apart. A name asked for
  // again gives the group made the first time.
  virtual std::shared_ptr<Communicator> group(const std::vector<int>& members, const std::string& name) = 0;
  virtual std::string kind() const = 0;  // "nccl", "store", "threads"
};

// `world` communicators of one process, one for each thread that plays a rank (tests).
std::vector<std::shared_ptr<Communicator>> make_thread_comms(int world);

// Where the ranks of one job meet: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
struct Rendezvous {
  int rank = 0, world = 1, local_rank = 0;
  bool hosted = false;  // MMDIT_STORE_HOSTED=1: the launcher serves the store, every rank is a client
  std::string host = "127.0.0.1";
  int port = 29500;
  std::chrono::seconds timeout{60};  // MMDIT_RENDEZVOUS_TIMEOUT (seconds) overrides it
  // From the environment; world 1 when WORLD_SIZE is unset. Throws UsageError for malformed values.
  static Rendezvous from_env();
};

// The rendezvous store (a c10d::TCPStore; opaque here so that this header needs no c10d).
struct Store;

// Joins the rendezvous: rank 0 serves a c10d::TCPStore at host:port and waits for the others. Throws UsageError
// ("rendezvous at HOST:PORT: ... within N s") when the ranks do not meet within the timeout.
std::shared_ptr<Store> connect_store(const Rendezvous& rv);

// A store served by this process (the launcher of local workers) on a free loopback port: no race for the port.
std::shared_ptr<Store> serve_store(int& port);
// The store's counters and queues, for the job workers (apps/): add, a non-blocking pop, a push.
int64_t store_add(Store& s, const std::string& key, int64_t value);
void store_push(Store& s, const std::string& queue, const std::string& value);
bool store_pop(Store& s, const std::string& queue, std::string& value);  // false when empty

// The communicator of the rendezvoused ranks: NCCL on CUDA devices (this process's device), the store itself on
// the CPU. Throws UsageError when NCCL was not built in.
std::shared_ptr<Communicator> make_process_comm(const std::shared_ptr<Store>& store, const Rendezvous& rv,
                                                const std::string& device);

// Whether this build has the NCCL communicator.
bool nccl_available();

}  // namespace mmdit

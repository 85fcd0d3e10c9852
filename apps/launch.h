// Workers: mmdit started again, one process per device, for one generation over several GPUs (`generate
// --gpus N`) and for job files over GPUs (`run --gpus N`). Users need no torchrun: the parent sets the variables
// torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) plus MMDIT_DEVICE, and waits.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mmdit {

struct Store;

// main() records its arguments, so that workers can be started with the same command line.
void set_process_args(int argc, char** argv);

// The devices of --gpus N / --devices A,B,... (at most one of them given): cuda:0..N-1, or the list. Empty when
// neither was given. Throws UsageError for more GPUs than this machine has, or a malformed list.
std::vector<std::string> requested_devices(int gpus, const std::string& devices);

// Starts this program once per entry of `envs` (each worker's extra environment), with this process's arguments,
// and waits for them all. Worker 0 writes to this stderr; the others' stderr goes to a file, and the last line of
// the first worker to fail is shown if worker 0 did not fail. When one fails, the others are stopped. Returns
// the first failure's exit status (0 when all succeed; 130 when interrupted).
struct WorkerOptions {
  bool first_to_terminal = true;       // false: every worker's stderr goes to a file
  bool stop_others_on_failure = true;  // one generation: a failed rank stops the world
  std::function<void()> poll;          // called every 20 ms while waiting, and once at the end
  // Called as each worker ends: its position, exit status and last stderr line (when it went to a file). Set, it
  // replaces the printing of the failed worker's line.
  std::function<void(int, int, const std::string&)> on_exit;
};
int run_workers(const std::vector<std::map<std::string, std::string>>& envs, const WorkerOptions& options = {});

// A client of a store served on this machine (a `run --gpus` worker's work queue). Throws UsageError.
std::shared_ptr<Store> join_local_store(int port);

// In a worker (or under torchrun): WORLD_SIZE > 1 in the environment.
bool in_worker();

// One world of workers on these devices: serves the rendezvous store on a free loopback port, sets torchrun's
// variables, MMDIT_DEVICE, NCCL_SOCKET_IFNAME=lo (one machine; unless set) and `extra`, and runs them
// (run_workers). Returns the exit status.
int run_world(const std::vector<std::string>& devices, const std::map<std::string, std::string>& extra = {});

// In a worker: joins the rendezvous and sets this thread's world (core/parallel.h) with `strategy`. `device` becomes
// this worker's: MMDIT_DEVICE, else entry LOCAL_RANK of --gpus/--devices, else cuda:LOCAL_RANK for a CUDA device
// (torchrun). Ranks above 0 log only warnings and errors.
void join_world(std::string& device, int gpus, const std::string& devices, const std::string& strategy);

}  // namespace mmdit

#include "apps/launch.h"

#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <torch/cuda.h>

#include "core/comm.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/options.h"
#include "core/parallel.h"

namespace mmdit {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> g_args;

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  return last;
}

}  // namespace

void set_process_args(int argc, char** argv) { g_args.assign(argv, argv + argc); }

bool in_worker() {
  const char* w = std::getenv("WORLD_SIZE");
  return w && std::atoi(w) > 1;
}

std::vector<std::string> requested_devices(int gpus, const std::string& devices) {
  if (gpus > 0 && !devices.empty()) throw UsageError("--gpus, --devices: give one of them");
  std::vector<std::string> out;
  if (!devices.empty()) {
    size_t start = 0;
    while (start <= devices.size()) {
      const size_t comma = devices.find(',', start);
      const std::string d = devices.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!valid_device(d) || d == "cuda") throw UsageError("--devices " + devices + ": '" + d + "' is not cpu or cuda:N");
      out.push_back(d);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  } else {
    for (int i = 0; i < gpus; ++i) out.push_back("cuda:" + std::to_string(i));
  }
  const int have = int(torch::cuda::device_count());
  for (const auto& d : out)
    if (d != "cpu" && std::atoi(d.c_str() + 5) >= have)
      throw UsageError((gpus > 0 ? "--gpus " + std::to_string(gpus) : "--devices " + devices) + ": this machine has " +
                       std::to_string(have) + " CUDA device" + (have == 1 ? "" : "s"));
  return out;
}

int run_workers(const std::vector<std::map<std::string, std::string>>& envs, const WorkerOptions& opt) {
  const int n = int(envs.size());
  std::vector<pid_t> pids(size_t(n), -1);
  std::vector<std::string> logs(static_cast<size_t>(n));
  const fs::path tmp = fs::temp_directory_path();
  std::fflush(stdout);
  std::fflush(stderr);
  // Each worker's environment and arguments, made before forking (the child only execs).
  std::vector<std::vector<std::string>> env_strings(static_cast<size_t>(n));
  std::vector<std::vector<char*>> envps(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    std::map<std::string, std::string> merged;
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      const size_t eq = kv.find('=');
      if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (const auto& [k, v] : envs[size_t(i)]) merged[k] = v;
    for (const auto& [k, v] : merged) env_strings[size_t(i)].push_back(k + "=" + v);
    for (auto& kv : env_strings[size_t(i)]) envps[size_t(i)].push_back(const_cast<char*>(kv.c_str()));
    envps[size_t(i)].push_back(nullptr);
  }
  std::vector<char*> argv;
  for (auto& a : g_args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (int i = 0; i < n; ++i) {
    if (i > 0 || !opt.first_to_terminal) logs[size_t(i)] = (tmp / ("mmdit-worker-" + std::to_string(::getpid()) + "-" + std::to_string(i) + ".log")).string();
    const pid_t pid = ::fork();
    if (pid < 0) throw RuntimeFailure("cannot start worker " + std::to_string(i));
    if (pid == 0) {
      if (!logs[size_t(i)].empty()) {
        const int fd = ::open(logs[size_t(i)].c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || ::dup2(fd, STDERR_FILENO) < 0) ::_exit(1);
      }
      ::execve("/proc/self/exe", argv.data(), envps[size_t(i)].data());
      ::_exit(127);
    }
    pids[size_t(i)] = pid;
  }
  // Ctrl-C reaches the workers too (same process group); the parent only waits for them.
  struct sigaction ignore {}, old_int {}, old_term {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGINT, &ignore, &old_int);
  sigaction(SIGTERM, &ignore, &old_term);
  int first_code = 0, first_worker = -1, left = n;
  std::vector<int> codes(static_cast<size_t>(n), 0);
  auto failed_at = std::chrono::steady_clock::time_point();
  bool stopped = false;
  while (left > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0) break;
    if (pid == 0) {
      if (opt.poll) opt.poll();
      // One worker failed: the others would wait for it in a collective. Most fail the same way at once (a bad
      // request); whatever is still running a moment later is stopped.
      if (opt.stop_others_on_failure && first_worker >= 0 && !stopped && std::chrono::steady_clock::now() - failed_at > std::chrono::seconds(3)) {
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGTERM);
        stopped = true;
      }
      ::usleep(20000);
      continue;
    }
    int i = 0;
    while (i < n && pids[size_t(i)] != pid) ++i;
    if (i == n) continue;
    pids[size_t(i)] = -1;
    --left;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    codes[size_t(i)] = code;
    if (opt.on_exit) opt.on_exit(i, code, logs[size_t(i)].empty() ? std::string() : last_line(logs[size_t(i)]));
    if (code != 0 && first_worker < 0) {
      first_worker = i;
      first_code = code;
      failed_at = std::chrono::steady_clock::now();
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (opt.poll) opt.poll();
  if (!opt.on_exit && first_worker > 0 && (codes[0] == 0 || codes[0] == 128 + SIGTERM)) {
    // Worker 0 did not report this failure itself: show the failing worker's last line.
    const std::string line = last_line(logs[size_t(first_worker)]);
    if (!line.empty()) std::fprintf(stderr, "%s (worker %d)\n", line.c_str(), first_worker);
  }
  if (opt.first_to_terminal && codes[0] != 0 && codes[0] != 128 + SIGTERM) first_code = codes[0];  // worker 0 reported its own failure
  for (const auto& l : logs)
    if (!l.empty()) {
      std::error_code ec;
      fs::remove(l, ec);
    }
  return first_code;
}

int run_world(const std::vector<std::string>& devices, const std::map<std::string, std::string>& extra) {
  int port = 0;
  auto store = serve_store(port);  // held until the workers are done
  std::vector<std::map<std::string, std::string>> envs;
  for (size_t i = 0; i < devices.size(); ++i) {
    std::map<std::string, std::string> e = extra;
    e.insert({{"RANK", std::to_string(i)}, {"LOCAL_RANK", std::to_string(i)},
              {"WORLD_SIZE", std::to_string(devices.size())}, {"MASTER_ADDR", "127.0.0.1"},
              {"MASTER_PORT", std::to_string(port)}, {"MMDIT_STORE_HOSTED", "1"}, {"MMDIT_DEVICE", devices[i]}});
    if (!std::getenv("NCCL_SOCKET_IFNAME")) e.insert({"NCCL_SOCKET_IFNAME", "lo"});
    envs.push_back(e);
  }
  return run_workers(envs);
}

std::shared_ptr<Store> join_local_store(int port) {
  Rendezvous rv;  // a world of one that meets at once; hosted: a client of the launcher's store
  rv.world = 1;
  rv.port = port;
  rv.hosted = true;
  return connect_store(rv);
}

void join_world(std::string& device, int gpus, const std::string& devices, const std::string& strategy) {
  const Rendezvous rv = Rendezvous::from_env();
  if (const char* d = std::getenv("MMDIT_DEVICE"); d && *d) {
    device = d;
  } else if (!devices.empty() || gpus > 0) {
    const auto list = requested_devices(gpus, devices);
    if (size_t(rv.local_rank) >= list.size())
      throw UsageError("LOCAL_RANK=" + std::to_string(rv.local_rank) + ": only " + std::to_string(list.size()) +
                       " devices were given");
    device = list[size_t(rv.local_rank)];
  } else if (device.rfind("cuda", 0) == 0) {
    device = "cuda:" + std::to_string(rv.local_rank);  // torchrun: one GPU per local rank
  }
  if (rv.rank > 0) init_logging(Verbosity::Quiet);
  auto store = connect_store(rv);
  set_world({make_process_comm(store, rv, device), strategy});
}

}  // namespace mmdit

// See data_plane.h: the lane's thread, and the queues through which the Python side hears of it.
#include "data_plane.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "lane_loop.h"

namespace llmaas::gw {
namespace {

void signal_fd(int fd) {
  uint64_t one = 1;
  ssize_t written = write(fd, &one, sizeof one);
  (void)written;  // an eventfd at its maximum is still readable, which is all a wake needs
}

}  // namespace

DataPlane::DataPlane(PlaneConfig config) : config_(std::move(config)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  control_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0 || control_fd_ < 0) throw std::runtime_error("eventfd failed");
}

DataPlane::~DataPlane() {
  stop();
  close(wake_fd_);
  close(control_fd_);
}

void DataPlane::enable_tenancy(std::shared_ptr<NativeTenancy> tenancy, const std::string& journal_path,
                               const std::string& db_path, const std::string& chain) {
  if (thread_.joinable()) throw std::logic_error("the lane is running");
  auto journal = std::make_unique<LaneJournal>(journal_path);
  // A lock held past this wait fails one flush, not the lane: the entries wait in the journal.
  ledger_ = std::make_unique<LaneLedger>(journal.get(), db_path, chain, 2000);
  journal_ = std::move(journal);
  tenancy_ = std::move(tenancy);
}

void DataPlane::start() {
  if (thread_.joinable()) return;
  last_event_kind_.assign(hosts_.num_hosts(), 0);
  thread_ = std::thread([this] { run(); });
}

void DataPlane::run() {
  Loop loop(*this, config_, hosts_, control_fd_);
  loop.run();
}

void DataPlane::begin_shutdown() {
  shutdown_requested_.store(true);
  signal_fd(control_fd_);
}

void DataPlane::stop() {
  if (!thread_.joinable()) return;
  stop_requested_.store(true);
  signal_fd(control_fd_);
  thread_.join();
}

void DataPlane::push_handoff(Handoff handoff) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    handoffs_.push_back(std::move(handoff));
  }
  signal_fd(wake_fd_);
}

void DataPlane::push_finished(const Finished& finished) {
  std::lock_guard<std::mutex> lock(mutex_);
  finished_.push_back(finished);
}

void DataPlane::push_host_event(int host, bool failure, std::string error) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Successes matter only as the end of a run of failures: one per host between two takes.
  if (!failure && last_event_kind_[host] == 1) return;
  last_event_kind_[host] = failure ? 2 : 1;
  host_events_.push_back(HostEvent{host, failure, std::move(error)});
}

std::vector<Handoff> DataPlane::take_handoffs() {
  uint64_t value;
  while (read(wake_fd_, &value, sizeof value) > 0) {
  }
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(handoffs_, {});
}

std::vector<Finished> DataPlane::take_finished() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(finished_, {});
}

std::vector<HostEvent> DataPlane::take_host_events() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::fill(last_event_kind_.begin(), last_event_kind_.end(), 0);
  return std::exchange(host_events_, {});
}

}  // namespace llmaas::gw

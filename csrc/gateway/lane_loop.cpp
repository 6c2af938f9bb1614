// See lane_loop.h and data_plane.h. Sockets are edge-triggered and registered once for reading,
// writing and hang-ups: the loop never changes a registration, so a request costs its reads and
// writes and nothing more. An edge that arrives while a client's request is out is remembered
// (`pending_read`) and served when the answer is written.
#include "lane_loop.h"

#include <sys/random.h>

#include <cstdlib>

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "lane_io.h"

namespace llmaas::gw {

using namespace lane;

Loop::Loop(DataPlane& plane, const PlaneConfig& config, HostTable& hosts, int control_fd)
    : plane_(plane),
      config_(config),
      hosts_(hosts),
      epoll_fd_(epoll_create1(EPOLL_CLOEXEC)),
      listen_(Endpoint::Kind::kListen, config.listen_fd),
      control_(Endpoint::Kind::kControl, control_fd) {
  idle_.resize(hosts.num_hosts());
  unsigned char random[12] = {};
  if (getrandom(random, sizeof random, 0) != static_cast<ssize_t>(sizeof random)) std::abort();
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char b : random) tag_prefix_.append({kHex[b >> 4], kHex[b & 15]});
  watch(&listen_, EPOLLIN);
  watch(&control_, EPOLLIN);
}

Loop::~Loop() {
  for (Endpoint* e : live_) {
    if (e->dead) continue;
    auto* c = e->kind == Endpoint::Kind::kClient ? static_cast<ClientConn*>(e) : nullptr;
    if (c != nullptr && c->upstream != nullptr) {
      // Stopped past the deadline with a request out: journaled and audited as a client that left
      // (proxy.py does the same), its engine connection closed, which our engines take as an abort.
      c->upstream->client = nullptr;
      c->upstream = nullptr;
      end_attempt(c);
      finish_gone(c, nullptr);
      continue;
    }
    kill(e);
  }
  for (Endpoint* e : graveyard_) delete e;
  close(epoll_fd_);
}

void Loop::watch(Endpoint* e, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = e;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, e->fd, &ev);
}

void Loop::run() {
  epoll_event events[256];
  double last_sweep = monotonic();
  while (!plane_.stop_requested_.load()) {
    int n = epoll_wait(epoll_fd_, events, 256, 50);
    now_ = monotonic();
    for (int i = 0; i < n; ++i) {
      auto* e = static_cast<Endpoint*>(events[i].data.ptr);
      if (!e->dead) dispatch(e, events[i].events);
    }
    if (now_ - last_sweep >= 0.05) {
      sweep();
      last_sweep = now_;
    }
    if (!graveyard_.empty()) {
      live_.erase(std::remove_if(live_.begin(), live_.end(), [](Endpoint* e) { return e->dead; }), live_.end());
      for (Endpoint* e : graveyard_) delete e;
      graveyard_.clear();
    }
  }
}

void Loop::dispatch(Endpoint* e, uint32_t events) {
  switch (e->kind) {
    case Endpoint::Kind::kListen:
      accept_all();
      break;
    case Endpoint::Kind::kControl: {
      uint64_t value;
      while (read(e->fd, &value, sizeof value) > 0) {
      }
      if (plane_.shutdown_requested_.load() && !shutting_down_) begin_shutdown();
      break;
    }
    case Endpoint::Kind::kClient:
      on_client(static_cast<ClientConn*>(e), events);
      break;
    case Endpoint::Kind::kUpstream:
      on_upstream(static_cast<UpstreamConn*>(e), events);
      break;
  }
}

void Loop::kill(Endpoint* e) {
  if (e->dead) return;
  e->dead = true;
  if (e->fd >= 0) close(e->fd);  // also leaves the epoll set
  e->fd = -1;
  if (e->kind == Endpoint::Kind::kClient) {
    auto* c = static_cast<ClientConn*>(e);
    plane_.open_clients_.fetch_sub(1);
    if (c->upstream != nullptr) {  // only when the lane stops with a request out: its counts end here
      c->upstream->client = nullptr;
      c->upstream = nullptr;
      end_attempt(c);
      plane_.in_flight_.fetch_sub(1);
    }
    release_grant(c);
  } else if (e->kind == Endpoint::Kind::kUpstream) {
    auto* u = static_cast<UpstreamConn*>(e);
    auto& pool = idle_[u->host];
    pool.erase(std::remove(pool.begin(), pool.end(), u), pool.end());
  }
  graveyard_.push_back(e);
}

// ---- time and shutdown -------------------------------------------------------------------

void Loop::sweep() {
  if (accept_paused_ && !shutting_down_) {
    accept_paused_ = false;
    watch(&listen_, EPOLLIN);
  }
  for (size_t i = 0; i < live_.size(); ++i) {
    Endpoint* e = live_[i];
    if (e->dead) continue;
    if (e->kind == Endpoint::Kind::kClient) {
      auto* c = static_cast<ClientConn*>(e);
      if (now_ < c->deadline) continue;
      if (c->phase == ClientConn::Phase::kIdle || c->phase == ClientConn::Phase::kWriting) {
        kill(c);  // idle past the keep-alive, or reading nothing of its answer for send_timeout_s
      } else if (c->phase == ClientConn::Phase::kHead || c->phase == ClientConn::Phase::kBody) {
        bool head = c->phase == ClientConn::Phase::kHead;
        c->request_bytes = 0;
        send_client(c, head ? config_.header_timeout_response : config_.body_timeout_response, false);
      }
    } else {
      auto* u = static_cast<UpstreamConn*>(e);
      if (u->client == nullptr || now_ < u->deadline) continue;
      const std::string& address = hosts_.host(u->host).address;
      char seconds[32];
      u->reused = false;  // a timeout is the host's failure, never a stale connection to retry
      if (u->phase == UpstreamConn::Phase::kConnecting) {
        std::snprintf(seconds, sizeof seconds, "%g", config_.connect_timeout_s);
        upstream_failed(u, "cannot connect to " + address + ": timed out after " + seconds + " s");
      } else if (u->head_done) {
        std::snprintf(seconds, sizeof seconds, "%g", config_.first_byte_timeout_s);
        upstream_failed(u, address + " sent nothing for " + seconds + " s");
      } else {
        std::snprintf(seconds, sizeof seconds, "%g", config_.first_byte_timeout_s);
        upstream_failed(u, address + " sent no response within " + seconds + " s");
      }
    }
  }
}

void Loop::begin_shutdown() {
  shutting_down_ = true;
  if (!accept_paused_) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_.fd, nullptr);
  for (size_t i = 0; i < live_.size(); ++i) {
    Endpoint* e = live_[i];
    if (e->dead || e->kind != Endpoint::Kind::kClient) continue;
    auto* c = static_cast<ClientConn*>(e);
    if (c->phase == ClientConn::Phase::kIdle || c->phase == ClientConn::Phase::kHead ||
        c->phase == ClientConn::Phase::kBody)
      kill(c);
  }
}

}  // namespace llmaas::gw

// The native lane's upstream side (lane_loop.h): pooled connections to the engines, requests out,
// answers in, failures and retries.
#include "lane_loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "lane_io.h"
#include <sys/socket.h>

namespace llmaas::gw {

using namespace lane;

// ---- upstreams ---------------------------------------------------------------------------

UpstreamConn* Loop::connect_to(int host, std::string* error) {
  const Host& h = hosts_.host(host);
  sockaddr_storage addr{};
  socklen_t addr_len = h.get_sockaddr(&addr);
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = "cannot connect to " + h.address + ": " + std::strerror(errno);
    return nullptr;
  }
  set_nodelay(fd);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len) < 0 && errno != EINPROGRESS) {
    *error = "cannot connect to " + h.address + ": " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  auto* u = new UpstreamConn(fd, host);
  live_.push_back(u);
  watch(u, kSocketEvents);
  return u;
}

void Loop::send_upstream(ClientConn* c, bool fresh) {
  UpstreamConn* u = nullptr;
  auto& pool = idle_[c->host];
  if (!fresh && !pool.empty()) {
    u = pool.back();
    pool.pop_back();
    u->reused = true;
  } else {
    std::string error;
    u = connect_to(c->host, &error);
    if (u == nullptr) {
      attempt_failed(c, error);
      return;
    }
  }
  const Host& h = hosts_.host(c->host);
  std::string_view body = c->granted ? std::string_view(c->forward_body)
                                     : std::string_view(c->in.data() + c->head.head_bytes,
                                                        static_cast<size_t>(c->head.content_length));
  // The Python client's exact request (http_client.py, backend.py): same headers, same order.
  u->out.clear();
  u->out.reserve(body.size() + 200);
  u->out.append("POST ").append(c->path).append(" HTTP/1.1\r\nhost: ").append(h.address);
  u->out.append("\r\ncontent-length: ").append(std::to_string(body.size()));
  u->out.append("\r\ncontent-type: application/json\r\nx-request-id: ").append(c->request_id);
  c->abort_tag.assign(tag_prefix_).append(std::to_string(next_tag_++));
  u->out.append("\r\nx-llmaas-abort-tag: ").append(c->abort_tag);
  if (!h.authorization.empty()) u->out.append("\r\nauthorization: ").append(h.authorization);
  u->out.append("\r\n\r\n").append(body);
  u->out_pos = 0;
  u->in.clear();
  u->body.clear();
  u->head_done = false;
  u->chunked = ChunkedDecoder();
  u->client = c;
  c->upstream = u;
  if (u->phase == UpstreamConn::Phase::kConnecting) {
    u->deadline = now_ + config_.connect_timeout_s;
  } else {
    u->phase = UpstreamConn::Phase::kBusy;
    u->deadline = now_ + config_.first_byte_timeout_s;
    flush_upstream(u);
  }
}

void Loop::on_upstream(UpstreamConn* u, uint32_t events) {
  if (u->phase == UpstreamConn::Phase::kConnecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (events & EPOLLHUP)) {
      upstream_failed(u, "cannot connect to " + hosts_.host(u->host).address + ": " +
                             std::strerror(err != 0 ? err : ECONNREFUSED));
      return;
    }
    u->phase = UpstreamConn::Phase::kBusy;
    u->deadline = now_ + config_.first_byte_timeout_s;
  }
  if (events & EPOLLOUT && u->phase == UpstreamConn::Phase::kBusy) {
    flush_upstream(u);
    if (u->dead) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_upstream(u);
}

void Loop::flush_upstream(UpstreamConn* u) {
  bool error = false;
  write_available(u->fd, u->out, &u->out_pos, &error);
  if (error) upstream_failed(u, "connection to " + hosts_.host(u->host).address + " lost while sending");
}

void Loop::read_upstream(UpstreamConn* u) {
  if (u->phase == UpstreamConn::Phase::kConnecting) return;
  bool more = false;  // an answer is read whole, however large, as the Python path does
  bool open = read_available(u->fd, &u->in, SIZE_MAX, &more);
  if (u->phase == UpstreamConn::Phase::kIdle || u->client == nullptr) {
    kill(u);  // bytes nobody asked for, or the engine closed an idle connection
    return;
  }
  const std::string& address = hosts_.host(u->host).address;
  if (!u->head_done) {
    HeadStatus status = parse_response_head(u->in, config_.max_header_bytes, &u->head);
    if (status == HeadStatus::kUnsupported) {
      upstream_failed(u, "bad response from " + address);
      return;
    }
    if (status == HeadStatus::kIncomplete) {
      if (!open) upstream_failed(u, "connection to " + address + " lost: closed by the server");
      return;
    }
    u->head_done = true;
  }
  u->deadline = now_ + config_.first_byte_timeout_s;  // the same bound on each silence after the head
  std::string_view raw = std::string_view(u->in).substr(u->head.head_bytes);
  bool complete = false, extra = false;
  switch (u->head.body_kind) {
    case BodyKind::kNone:
      complete = true;
      extra = !raw.empty();
      break;
    case BodyKind::kLength:
      complete = raw.size() >= static_cast<size_t>(u->head.content_length);
      extra = raw.size() > static_cast<size_t>(u->head.content_length);
      if (complete) u->body.assign(raw.substr(0, static_cast<size_t>(u->head.content_length)));
      break;
    case BodyKind::kChunked: {
      ChunkedDecoder::State state = u->chunked.feed(raw, &u->body);
      if (state == ChunkedDecoder::State::kError) {
        upstream_failed(u, "bad chunked body from " + address);
        return;
      }
      complete = state == ChunkedDecoder::State::kDone;
      extra = complete && u->chunked.consumed() < raw.size();
      break;
    }
    case BodyKind::kUntilClose:
      complete = !open;
      if (complete) u->body.assign(raw);
      break;
  }
  if (!complete) {
    if (!open) upstream_failed(u, "connection to " + address + " lost: closed by the server");
    return;
  }
  upstream_answered(u, open && u->head.keep_alive && !extra);
}

void Loop::attempt_failed(ClientConn* c, const std::string& error) {
  c->upstream = nullptr;
  host_failed(c->host, error);
  c->last_error = error;
  end_attempt(c);
  if (c->gone) finish_gone(c, nullptr);
  else try_host(c);
}

void Loop::upstream_failed(UpstreamConn* u, const std::string& error) {
  ClientConn* c = u->client;
  bool stale = u->reused && u->in.empty();
  kill(u);
  if (c == nullptr) return;
  c->upstream = nullptr;
  if (stale && !c->fresh_retry && !c->gone) {
    // A pooled connection the engine had closed: it cannot have seen the request (http_client.py).
    c->fresh_retry = true;
    send_upstream(c, true);
    return;
  }
  attempt_failed(c, error);
}

void Loop::upstream_answered(UpstreamConn* u, bool reusable) {
  ClientConn* c = u->client;
  int status = u->head.status;
  std::string content_type = u->head.content_type;
  std::string body = std::move(u->body);
  u->client = nullptr;
  u->phase = UpstreamConn::Phase::kIdle;
  u->in.clear();
  u->out.clear();
  if (reusable && idle_[u->host].size() < config_.max_idle_per_host) idle_[u->host].push_back(u);
  else kill(u);
  if (c == nullptr) return;
  c->upstream = nullptr;
  end_attempt(c);
  const std::string& name = hosts_.host(c->host).name;
  if (!c->gone && (retry_status(status) || (status == 200 && !json_object(body)))) {
    // Overloaded or going down, or a 200 that is no completion (an HTML page, nothing): it counts
    // against the host (proxy.py's _failed) and another host may serve it.
    c->last_error = name + " answered " + std::to_string(status) +
                    (status == 200 ? " with a body that is not a completion" : "");
    host_failed(c->host, c->last_error);
    try_host(c);
    return;
  }
  c->first_byte = now_;  // an engine's answer: relayed, or billed for a client that left
  // A server error is relayed (it may have done work) and counts against the host.
  if (status >= 500) host_failed(c->host, name + " answered " + std::to_string(status));
  else host_answered(c->host);
  UsageCounts usage;
  bool has_usage = status == 200 && scan_usage(body, &usage);
  if (c->gone) {
    finish_gone(c, has_usage ? &usage : nullptr);
    return;
  }
  answer(c, status, content_type, body, has_usage ? &usage : nullptr);
}

void Loop::host_failed(int host, const std::string& error) {
  Host& h = hosts_.host(host);
  if (++h.failures >= config_.failure_threshold) {
    h.failures = 0;
    h.healthy.store(false);
  }
  plane_.push_host_event(host, true, error);
}

void Loop::host_answered(int host) {
  hosts_.host(host).failures = 0;
  plane_.push_host_event(host, false, std::string());
}

void Loop::send_abort(int host, const std::string& tag) {
  // proxy.py's _abort: on a connection of its own, closed at the answer's first byte, whatever it
  // says. Best effort: an engine that cannot be told finishes the request, billed all the same.
  std::string error;
  UpstreamConn* u = connect_to(host, &error);
  if (u == nullptr) return;
  const Host& h = hosts_.host(host);
  u->out.assign("POST /internal/abort/").append(tag).append(" HTTP/1.1\r\nhost: ").append(h.address);
  u->out.append("\r\ncontent-length: 0\r\nconnection: close");
  if (!h.authorization.empty()) u->out.append("\r\nauthorization: ").append(h.authorization);
  u->out.append("\r\n\r\n");
  u->deadline = now_ + config_.connect_timeout_s;
}

}  // namespace llmaas::gw

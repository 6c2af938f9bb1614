// Socket reads and writes shared by the native lane's client and upstream sides (lane_loop.h).
#pragma once

#include <sys/epoll.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llmaas::gw::lane {

// Sockets are registered once, edge-triggered, for reading, writing and hang-ups.
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr size_t kReadChunk = 64 * 1024;
constexpr std::string_view kChatPath = "/v1/chat/completions";
constexpr std::string_view kCompletionsPath = "/v1/completions";
// What every request the lane serves starts with (both routes above, POST).
constexpr std::string_view kServedPrefix = "POST /v1/";
// OpenAI's max_tokens for a completions request that gives none (protocol.py).
constexpr int64_t kCompletionsDefaultMaxTokens = 16;

double monotonic();
double wall_clock();  // seconds since the epoch: the tenancy's time

// The peer's address as Python's socket module writes it (request.client[0]).
std::string peer_ip(const void* sockaddr_storage_ptr);

// Reads what the socket holds, up to `limit` buffered bytes; false at end of stream or on an
// error. *more is set when it stopped at the limit with bytes possibly left. A short read means
// the socket is empty: with edge-triggered events, bytes that arrive later raise a new edge, so no
// second call is made just to hear EAGAIN (a syscall per read saved).
bool read_available(int fd, std::string* into, size_t limit, bool* more);

// Writes from *pos on; true when all is written, false when the socket would block.
// *error is set when the peer is gone.
bool write_available(int fd, const std::string& data, size_t* pos, bool* error);

void set_nodelay(int fd);

// Appends `s` as a JSON string, escaped as msgspec escapes it (so both servers answer alike).
void append_json_string(std::string* out, std::string_view s);

// Whether a 200's body looks like a completion (a JSON object), not HTML or nothing: proxy.py's
// _json_object, so both paths retry the same answers.
bool json_object(std::string_view body);

inline bool retry_status(int status) { return status == 502 || status == 503 || status == 504; }

}  // namespace llmaas::gw::lane

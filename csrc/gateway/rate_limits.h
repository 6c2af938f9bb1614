// Tier limits, natively: requests/min and tokens/min buckets, concurrent requests and the monthly
// budget of each (tenant, tier), the same rules as gateway/tenancy/rate_limit.py (which explains
// them) in one table that the Python request path and the native lane share, so a tenant's limits
// hold across both: each state is checked and taken under its own mutex, whichever thread asks.
//
// The table never forgets a state, so the lane keeps plain pointers to them. Time is always the
// caller's (`now`, seconds since the epoch): Python passes its injectable clock's, the lane its own.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace llmaas::gw {

struct Bucket {
  double capacity = 0, rate = 0, level = 0, stamp = 0;  // rate: refill per second

  void refill(double now);
  double reset_in() const;
  double wait_for(double amount) const;
};

enum class Verdict { kAdmitted, kRequests, kTokens, kConcurrency, kBudget, kNewMonth };

// The six x-ratelimit-* header values, in rate_limit.py headers() order: limit, remaining and
// reset of requests, then of tokens.
using HeaderValues = std::array<std::string, 6>;

struct LimitState {
  std::mutex mutex;
  Bucket requests, tokens;
  int64_t concurrent_limit = 0;
  double budget_eur = 0;
  double month_start = 0, month_end = 0, spent_eur = 0, reserved_eur = 0;
  int64_t inflight = 0;
  std::string limit_requests, limit_tokens;  // the two limits as header values
};

struct Admission {
  Verdict verdict = Verdict::kAdmitted;
  double wait_s = 0;     // Retry-After's source for a refusal
  double spent_eur = 0;  // the month's spend, for a budget refusal's message
  HeaderValues headers;  // after the take when admitted, as they stand otherwise
};

class LimitTable {
 public:
  int add(int64_t requests_per_minute, int64_t tokens_per_minute, int64_t concurrent, double budget_eur, double now,
          double month_start, double month_end, double spent_eur);
  LimitState* state(int index);
  // Takes one request, `tokens` and `cost_eur` of budget, or nothing (and says which limit).
  // kNewMonth: `now` is past the month's end; call new_month with the ledger's spend and ask again.
  static Admission admit(LimitState& s, double now, int64_t tokens, double cost_eur);
  static HeaderValues snapshot(LimitState& s, double now);
  // Settles an admitted request: gives back the reserved tokens it did not use (or takes more,
  // leaving the bucket in debt), its concurrency slot and its reserved cost; books what it cost.
  static void reconcile(LimitState& s, double now, int64_t reserved_tokens, int64_t used_tokens,
                        double reserved_eur, double cost_eur);
  static void new_month(LimitState& s, double month_start, double month_end, double spent_eur);

 private:
  std::mutex mutex_;  // guards states_ (not the states)
  std::vector<std::unique_ptr<LimitState>> states_;
};

// rate_limit.py duration(): OpenAI's reset format (`20ms`, `1s`, `6m0s`, `1h2m3s`).
std::string reset_duration(double seconds);

}  // namespace llmaas::gw

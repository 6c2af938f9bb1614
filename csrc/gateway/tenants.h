// The tenant stages on the native lane: API key, permission, lifecycle and limits at admission,
// cost at the end, for the requests that pass them all. Everything else -- a missing, unknown,
// wrong, expired, revoked or due-to-rotate key, a model the token may not use or that is not
// plainly in service (deprecated, retired, not yet live), a limit reached, a new month -- is handed
// to the Python server, whose tenancy stage decides again, answers and audits the refusal
// (gateway/stages/tenancy_stage.py). So the lane never refuses: it serves what Python would serve,
// with the same headers and the same engine overrides, or lets Python speak.
//
// The Python side (gateway/native_lane.py) pushes a new TenantView every second and whenever a
// token changes through this process: tokens (their HMAC and what the store says of them), tiers,
// prices per model and tier, and each model's window of plain service. Limits live in a LimitTable
// that both sides share (rate_limits.h).
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rate_limits.h"
#include "sha256.h"

namespace llmaas::gw {

constexpr double kNever = std::numeric_limits<double>::infinity();

struct TierInfo {
  int64_t priority = 0;  // the tier's: higher runs first (the engine gets its negation)
  int64_t max_tokens_per_request = 0;
  int64_t tokens_per_minute = 0;
};

struct PriceSet {  // EUR per million tokens (gateway/tenancy/ledger.py)
  double input = 0, cached_input = 0, output = 0, reasoning = 0;
};

struct TokenEntry {
  std::string id, tenant;
  std::array<uint8_t, 32> secret_hash{};
  int tier = 0;
  int limit_index = -1;
  LimitState* limits = nullptr;  // the (tenant, tier) state
  double expires_at = kNever, revoked_at = kNever, rotate_at = kNever;
  std::vector<uint8_t> models;  // by lane model index: 1 when the token may use it
  std::string headers;          // rendered "name: value\r\n" lines (a rotated token's notice)
};

struct TenantView {
  bool require_auth = true;
  std::unordered_map<std::string, TokenEntry> tokens;  // by token id
  TokenEntry local;  // every caller when require_auth is false (`--no-auth`)
  std::vector<TierInfo> tiers;
  std::vector<double> serve_from, serve_until;  // by lane model: when it is plainly in service
  std::vector<PriceSet> prices;                 // [model * tiers.size() + tier]

  const PriceSet& price(int model, int tier) const { return prices[model * tiers.size() + tier]; }
};

// What a request's admission asks for: the Python path's figures (proxy.py, tenancy_stage.py).
struct TenantAsk {
  int model = 0;
  int64_t prompt_tokens = 0;  // the estimate: prompt characters / 4 + 8
  int64_t asked = 0;          // max_completion_tokens or max_tokens (0: neither)
  int64_t n = 1;
};

// An admitted request: what it holds until it is settled.
struct TenantGrant {
  std::shared_ptr<const TenantView> view;  // keeps *token alive
  const TokenEntry* token = nullptr;
  int64_t reserved_tokens = 0;
  double reserved_eur = 0;
  PriceSet prices;
  std::string headers;    // x-ratelimit-* and the token's own, rendered
  std::string overrides;  // `"priority":P[,"max_tokens_cap":M]}`: replaces the body's closing brace after a comma
};

struct TenantCounts {
  int64_t input = 0, cached_input = 0, output = 0, reasoning = 0;
};

class NativeTenancy {
 public:
  NativeTenancy(std::string_view pepper, std::shared_ptr<LimitTable> limits)
      : hmac_(pepper), limits_(std::move(limits)) {}
  LimitTable& limits() { return *limits_; }
  void set_view(std::shared_ptr<const TenantView> view);
  // True: admitted, *grant filled and the limits taken. False: hand the request to Python.
  bool admit(std::string_view authorization, bool has_authorization, const TenantAsk& ask, double now,
             TenantGrant* grant) const;
  // Settles a grant with the request's counts; returns what it cost.
  static double settle(const TenantGrant& grant, const TenantCounts& counts, double now);
  // The token id of a presented secret (ours: its public part; a foreign one: derived with the
  // pepper, as tokens.py parse() does) and the key to hash; false for what Python would refuse.
  bool parse_secret(std::string_view secret, std::string* id, std::string_view* key) const;

 private:
  HmacSha256 hmac_;
  std::shared_ptr<LimitTable> limits_;
  mutable std::mutex mutex_;  // guards view_ (the pointer, not the view)
  std::shared_ptr<const TenantView> view_;
};

// ledger.py cost_eur and worst_case_cost.
double cost_eur(const TenantCounts& counts, const PriceSet& prices);
double worst_case_cost(int64_t prompt_tokens, int64_t max_tokens, const PriceSet& prices);

}  // namespace llmaas::gw

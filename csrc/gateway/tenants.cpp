// See tenants.h. Each check mirrors gateway/tenancy/service.py and tokens.py, in their order.
#include "tenants.h"

#include <algorithm>

namespace llmaas::gw {
namespace {

constexpr std::string_view kPrefix = "llmaas-";
constexpr size_t kIdLength = 12;
constexpr size_t kMinForeignLength = 16;

void append_header(std::string* out, std::string_view name, std::string_view value) {
  out->append(name).append(": ").append(value).append("\r\n");
}

}  // namespace

double cost_eur(const TenantCounts& c, const PriceSet& p) {
  double fresh = static_cast<double>(c.input - c.cached_input);
  double visible = static_cast<double>(c.output - c.reasoning);
  return (fresh * p.input + static_cast<double>(c.cached_input) * p.cached_input + visible * p.output +
          static_cast<double>(c.reasoning) * p.reasoning) /
         1e6;
}

double worst_case_cost(int64_t prompt_tokens, int64_t max_tokens, const PriceSet& p) {
  return (static_cast<double>(prompt_tokens) * std::max(p.input, p.cached_input) +
          static_cast<double>(max_tokens) * std::max(p.output, p.reasoning)) /
         1e6;
}

void NativeTenancy::set_view(std::shared_ptr<const TenantView> view) {
  std::lock_guard<std::mutex> lock(mutex_);
  view_ = std::move(view);
}

bool NativeTenancy::parse_secret(std::string_view secret, std::string* id, std::string_view* key) const {
  if (secret.substr(0, kPrefix.size()) == kPrefix) {
    std::string_view rest = secret.substr(kPrefix.size());
    size_t sep = rest.find('_');
    if (sep != kIdLength || sep + 1 >= rest.size()) return false;
    id->assign(rest.substr(0, sep));
    *key = rest.substr(sep + 1);
    return true;
  }
  if (secret.size() < kMinForeignLength) return false;
  std::string message = "id:";
  message.append(secret);
  uint8_t digest[32];
  hmac_.digest(message, digest);
  static const char kHex[] = "0123456789abcdef";
  id->assign("x");
  for (size_t i = 0; id->size() < kIdLength; ++i) {
    id->push_back(kHex[digest[i / 2] >> (i % 2 ? 0 : 4) & 0xf]);
  }
  *key = secret;
  return true;
}

bool NativeTenancy::admit(std::string_view authorization, bool has_authorization, const TenantAsk& ask, double now,
                          TenantGrant* grant) const {
  std::shared_ptr<const TenantView> view;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    view = view_;
  }
  if (!view) return false;
  const TokenEntry* token = nullptr;
  if (!view->require_auth) {
    token = &view->local;
  } else {
    if (!has_authorization || authorization.size() < 7) return false;
    for (size_t i = 0; i < 7; ++i) {
      unsigned char c = static_cast<unsigned char>(authorization[i]);
      if ((c >= 'A' && c <= 'Z' ? c | 0x20 : c) != "bearer "[i]) return false;
    }
    std::string_view secret = authorization.substr(7);
    while (!secret.empty() && (secret.front() == ' ' || secret.front() == '\t')) secret.remove_prefix(1);
    while (!secret.empty() && (secret.back() == ' ' || secret.back() == '\t')) secret.remove_suffix(1);
    // Printable ASCII only: anything else (Python's str.strip() has its own idea of whitespace)
    // is Python's to judge.
    if (secret.empty() || !std::all_of(secret.begin(), secret.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
      return false;
    std::string id;
    std::string_view key;
    if (!parse_secret(secret, &id, &key)) return false;
    auto found = view->tokens.find(id);
    // Hashed whether or not the id is known, so both cost the same (tokens.py verify).
    uint8_t digest[32];
    hmac_.digest(key, digest);
    static const std::array<uint8_t, 32> kNone{};
    const uint8_t* expected = found != view->tokens.end() ? found->second.secret_hash.data() : kNone.data();
    if (!digests_equal(digest, expected) || found == view->tokens.end()) return false;
    token = &found->second;
    if (token->revoked_at <= now || now >= token->expires_at || now >= token->rotate_at) return false;
  }
  if (token->limits == nullptr || ask.model < 0 || static_cast<size_t>(ask.model) >= token->models.size() ||
      !token->models[ask.model] || now < view->serve_from[ask.model] || now >= view->serve_until[ask.model])
    return false;
  const TierInfo& tier = view->tiers[token->tier];
  if (ask.asked < 0 || ask.n < 1) return false;  // the engine refuses these; Python relays its answer
  int64_t completion = ask.asked != 0 ? ask.asked
                                      : std::max<int64_t>(0, (tier.max_tokens_per_request - ask.prompt_tokens) / ask.n);
  int64_t output = 0, tokens = 0;
  if (__builtin_mul_overflow(ask.n, completion, &output) || __builtin_add_overflow(ask.prompt_tokens, output, &tokens))
    return false;
  if (tokens > tier.max_tokens_per_request || tokens > tier.tokens_per_minute) return false;
  const PriceSet& prices = view->price(ask.model, token->tier);
  double reserved_eur = worst_case_cost(ask.prompt_tokens, output, prices);
  Admission admission = LimitTable::admit(*token->limits, now, tokens, reserved_eur);
  if (admission.verdict != Verdict::kAdmitted) return false;
  grant->view = std::move(view);
  grant->token = token;
  grant->reserved_tokens = tokens;
  grant->reserved_eur = reserved_eur;
  grant->prices = prices;
  grant->headers.clear();
  static constexpr std::string_view kNames[6] = {
      "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
      "x-ratelimit-limit-tokens",   "x-ratelimit-remaining-tokens",   "x-ratelimit-reset-tokens"};
  for (size_t i = 0; i < 6; ++i) append_header(&grant->headers, kNames[i], admission.headers[i]);
  grant->headers.append(token->headers);
  grant->overrides.assign("\"priority\":").append(std::to_string(-tier.priority));
  // A ceiling, as tenancy_stage.py sends it: a max_tokens past the model's context would be refused.
  if (ask.asked == 0) grant->overrides.append(",\"max_tokens_cap\":").append(std::to_string(completion));
  grant->overrides.push_back('}');
  return true;
}

double NativeTenancy::settle(const TenantGrant& grant, const TenantCounts& counts, double now) {
  double cost = cost_eur(counts, grant.prices);
  LimitTable::reconcile(*grant.token->limits, now, grant.reserved_tokens, counts.input + counts.output,
                        grant.reserved_eur, cost);
  return cost;
}

}  // namespace llmaas::gw

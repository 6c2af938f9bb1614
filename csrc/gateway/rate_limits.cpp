// See rate_limits.h; the arithmetic is rate_limit.py's, operation for operation, so both give the same
// levels and header values.
#include "rate_limits.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace llmaas::gw {

void Bucket::refill(double now) {
  if (now > stamp) {
    level = std::min(capacity, level + (now - stamp) * rate);
    stamp = now;
  }
}

double Bucket::reset_in() const { return std::max(0.0, (capacity - level) / rate); }

double Bucket::wait_for(double amount) const { return std::max(0.0, (amount - level) / rate); }

std::string reset_duration(double seconds) {
  char out[64];
  if (seconds < 1.0) {
    std::snprintf(out, sizeof out, "%lldms", static_cast<long long>(std::ceil(seconds * 1000)));
    return out;
  }
  long long total = static_cast<long long>(std::ceil(seconds));
  long long h = total / 3600, m = total % 3600 / 60, s = total % 60;
  if (h) std::snprintf(out, sizeof out, "%lldh%lldm%llds", h, m, s);
  else if (m) std::snprintf(out, sizeof out, "%lldm%llds", m, s);
  else std::snprintf(out, sizeof out, "%llds", s);
  return out;
}

namespace {

std::string remaining(double level) {
  return level > 0.0 ? std::to_string(static_cast<long long>(level)) : std::string("0");
}

HeaderValues header_values(const LimitState& s) {
  return {s.limit_requests, remaining(s.requests.level), reset_duration(s.requests.reset_in()),
          s.limit_tokens, remaining(s.tokens.level), reset_duration(s.tokens.reset_in())};
}

}  // namespace

int LimitTable::add(int64_t requests_per_minute, int64_t tokens_per_minute, int64_t concurrent, double budget_eur,
                    double now, double month_start, double month_end, double spent_eur) {
  auto s = std::make_unique<LimitState>();
  double rpm = static_cast<double>(requests_per_minute), tpm = static_cast<double>(tokens_per_minute);
  s->requests = Bucket{rpm, rpm / 60.0, rpm, now};
  s->tokens = Bucket{tpm, tpm / 60.0, tpm, now};
  s->concurrent_limit = concurrent;
  s->budget_eur = budget_eur;
  s->month_start = month_start;
  s->month_end = month_end;
  s->spent_eur = spent_eur;
  s->limit_requests = std::to_string(requests_per_minute);
  s->limit_tokens = std::to_string(tokens_per_minute);
  std::lock_guard<std::mutex> lock(mutex_);
  states_.push_back(std::move(s));
  return static_cast<int>(states_.size()) - 1;
}

LimitState* LimitTable::state(int index) {
  std::lock_guard<std::mutex> lock(mutex_);
  return index >= 0 && static_cast<size_t>(index) < states_.size() ? states_[index].get() : nullptr;
}

Admission LimitTable::admit(LimitState& s, double now, int64_t tokens, double cost_eur) {
  std::lock_guard<std::mutex> lock(s.mutex);
  Admission out;
  if (now >= s.month_end) {
    out.verdict = Verdict::kNewMonth;
    return out;
  }
  s.requests.refill(now);
  s.tokens.refill(now);
  if (s.requests.level < 1.0) {
    out.verdict = Verdict::kRequests;
    out.wait_s = s.requests.wait_for(1.0);
  } else if (s.tokens.level < static_cast<double>(tokens)) {
    out.verdict = Verdict::kTokens;
    out.wait_s = s.tokens.wait_for(static_cast<double>(tokens));
  } else if (s.inflight >= s.concurrent_limit) {
    out.verdict = Verdict::kConcurrency;
    out.wait_s = 1.0;
  } else if (s.spent_eur + s.reserved_eur + cost_eur > s.budget_eur) {
    out.verdict = Verdict::kBudget;
    out.wait_s = s.month_end - now;
    out.spent_eur = s.spent_eur;
  } else {
    s.requests.level -= 1.0;
    s.tokens.level -= static_cast<double>(tokens);
    s.inflight += 1;
    s.reserved_eur += cost_eur;
  }
  out.headers = header_values(s);
  return out;
}

HeaderValues LimitTable::snapshot(LimitState& s, double now) {
  std::lock_guard<std::mutex> lock(s.mutex);
  s.requests.refill(now);
  s.tokens.refill(now);
  return header_values(s);
}

void LimitTable::reconcile(LimitState& s, double now, int64_t reserved_tokens, int64_t used_tokens,
                           double reserved_eur, double cost_eur) {
  std::lock_guard<std::mutex> lock(s.mutex);
  s.tokens.refill(now);
  // (level + reserved) - used, in rate_limit.py's order: the same rounding.
  s.tokens.level = std::min(s.tokens.capacity, s.tokens.level + static_cast<double>(reserved_tokens) -
                                                   static_cast<double>(used_tokens));
  s.inflight -= 1;
  s.reserved_eur -= reserved_eur;
  s.spent_eur += cost_eur;
}

void LimitTable::new_month(LimitState& s, double month_start, double month_end, double spent_eur) {
  std::lock_guard<std::mutex> lock(s.mutex);
  s.month_start = month_start;
  s.month_end = month_end;
  s.spent_eur = spent_eur;
}

}  // namespace llmaas::gw

// The native lane's tenant side (lane_loop.h, tenants.h): admitting a request under the tenant
// stages, settling it (its usage journaled before the answer goes out), and giving back what a
// request handed to Python had taken.
#include <cstring>

#include "lane_io.h"
#include "lane_loop.h"

namespace llmaas::gw {

using namespace lane;

bool Loop::admit_tenant(ClientConn* c) {
  // tenancy_stage.py's figures: the prompt estimate, `max_completion_tokens or max_tokens`, n.
  const RequestFields& f = c->fields;
  TenantAsk ask;
  ask.model = c->model;
  ask.prompt_tokens = f.prompt_chars / 4 + 8;
  ask.asked = (f.has_max_completion_tokens && f.max_completion_tokens != 0) ? f.max_completion_tokens
              : (f.has_max_tokens && f.max_tokens != 0)                    ? f.max_tokens
              : c->head.target == kCompletionsPath                         ? kCompletionsDefaultMaxTokens
                                                                           : 0;
  ask.n = (f.has_n && f.n != 0) ? f.n : 1;
  if (!plane_.tenancy()->admit(c->head.authorization, c->head.has_authorization, ask, wall_clock(), &c->grant))
    return false;
  c->granted = true;
  c->prompt_estimate = ask.prompt_tokens;
  // proxy.py: the overrides appended after the body's last field (the last key wins in JSON decoders).
  std::string_view body(c->in.data() + c->head.head_bytes, static_cast<size_t>(c->head.content_length));
  while (!body.empty() && body.back() != '\0' && std::strchr(" \t\n\r\x0b\x0c", body.back()) != nullptr) body.remove_suffix(1);
  body.remove_suffix(1);  // the closing brace: scan_request saw a JSON object
  c->forward_body.assign(body).push_back(',');
  c->forward_body.append(c->grant.overrides);
  return true;
}

bool Loop::settle_tenant(ClientConn* c, int status, const UsageCounts* usage, double* cost) {
  // tenancy_stage.py finish: the engine's counts, else the prompt estimate for an answer it gave
  // (a client that left before any answer, or the lane's own 503 when no engine answered, is
  // billed nothing).
  TenantCounts counts;
  if (usage != nullptr) {
    counts = TenantCounts{usage->prompt_tokens, usage->cached_tokens, usage->completion_tokens,
                          usage->reasoning_tokens};
  } else if (status != 499 && c->first_byte > 0) {
    counts.input = c->prompt_estimate;
  }
  const TenantGrant& grant = c->grant;
  LedgerEntry e;
  e.request_id = c->request_id;
  e.time = wall_clock();
  e.tenant = grant.token->tenant;
  e.token_id = grant.token->id;
  e.model = hosts_.model_name(c->model);
  e.client = c->client_ip;
  e.input = counts.input;
  e.cached_input = counts.cached_input;
  e.output = counts.output;
  e.reasoning = counts.reasoning;
  e.cost_eur = cost_eur(counts, grant.prices);
  e.status = status;
  e.latency_ms = (now_ - c->started) * 1000.0;
  e.reason = status == 499 ? "aborted" : status < 400 ? "ok" : "error";
  if (!plane_.journal()->append(e)) return false;
  *cost = NativeTenancy::settle(grant, counts, e.time);
  c->granted = false;
  return true;
}

void Loop::release_grant(ClientConn* c) {
  if (!c->granted) return;
  c->granted = false;
  NativeTenancy::settle(c->grant, TenantCounts{}, wall_clock());
  c->grant.token = nullptr;
  c->grant.view.reset();
}

}  // namespace llmaas::gw

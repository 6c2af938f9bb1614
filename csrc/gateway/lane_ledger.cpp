// See lane_ledger.h.
#include "lane_ledger.h"

#include <stdexcept>

#ifdef LLMAAS_WITH_SQLITE
#include <sqlite3.h>

#include "audit_hash.h"

namespace llmaas::gw {
namespace {

// gateway/tenancy/sqlite_writer.py USAGE_SQL and AUDIT_SQL, the columns in store.py's order.
constexpr const char* kUsageSql =
    "INSERT INTO usage (request_id, time, tenant, token_id, model, input_tokens, cached_input_tokens, "
    "output_tokens, reasoning_tokens, cost_eur, status, latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
constexpr const char* kAuditSql =
    "INSERT INTO audit (seq, time, tenant, token_id, client, model, status, reason, input_tokens, "
    "output_tokens, request_id, prev_hash, hash, chain) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
constexpr const char* kHeadSql = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)";

void bind_text(sqlite3_stmt* s, int at, const std::string& text) {
  sqlite3_bind_text(s, at, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
}

}  // namespace

const char* sqlite_version() { return sqlite3_libversion(); }

LaneLedger::LaneLedger(LaneJournal* journal, const std::string& db_path, const std::string& chain,
                       int busy_timeout_ms)
    : journal_(journal), chain_(chain), head_key_("audit_head:" + chain) {
  if (chain.empty()) throw std::runtime_error("the lane's audit chain needs a name");
  int rc = sqlite3_open_v2(db_path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  try {
    check(rc, "open");
    sqlite3_busy_timeout(db_, busy_timeout_ms);
    exec("PRAGMA synchronous=NORMAL");  // as the store's: WAL, no fsync at commit (the journal's file has them)
    check(sqlite3_prepare_v3(db_, kUsageSql, -1, SQLITE_PREPARE_PERSISTENT, &usage_, nullptr), "prepare");
    check(sqlite3_prepare_v3(db_, kAuditSql, -1, SQLITE_PREPARE_PERSISTENT, &audit_, nullptr), "prepare");
    check(sqlite3_prepare_v3(db_, kHeadSql, -1, SQLITE_PREPARE_PERSISTENT, &head_, nullptr), "prepare");
  } catch (...) {
    sqlite3_finalize(usage_);
    sqlite3_finalize(audit_);
    sqlite3_close_v2(db_);
    throw;
  }
}

LaneLedger::~LaneLedger() {
  sqlite3_finalize(usage_);
  sqlite3_finalize(audit_);
  sqlite3_finalize(head_);
  sqlite3_close_v2(db_);
}

void LaneLedger::check(int rc, const char* what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
  std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  throw std::runtime_error(std::string("the lane's ledger: ") + what + ": " + message);
}

void LaneLedger::exec(const char* sql) { check(sqlite3_exec(db_, sql, nullptr, nullptr, nullptr), sql); }

void LaneLedger::insert(const LedgerEntry& e, int64_t seq, const std::string& prev, const std::string& hash) {
  sqlite3_stmt* u = usage_;
  bind_text(u, 1, e.request_id);
  sqlite3_bind_double(u, 2, e.time);
  bind_text(u, 3, e.tenant);
  bind_text(u, 4, e.token_id);
  bind_text(u, 5, e.model);
  sqlite3_bind_int64(u, 6, e.input);
  sqlite3_bind_int64(u, 7, e.cached_input);
  sqlite3_bind_int64(u, 8, e.output);
  sqlite3_bind_int64(u, 9, e.reasoning);
  sqlite3_bind_double(u, 10, e.cost_eur);
  sqlite3_bind_int64(u, 11, e.status);
  sqlite3_bind_double(u, 12, e.latency_ms);
  int rc = sqlite3_step(u);
  sqlite3_reset(u);
  check(rc, "usage row");
  sqlite3_stmt* a = audit_;
  sqlite3_bind_int64(a, 1, seq);
  sqlite3_bind_double(a, 2, e.time);
  bind_text(a, 3, e.tenant);
  bind_text(a, 4, e.token_id);
  if (e.client.empty()) sqlite3_bind_null(a, 5);
  else bind_text(a, 5, e.client);
  bind_text(a, 6, e.model);
  sqlite3_bind_int64(a, 7, e.status);
  bind_text(a, 8, e.reason);
  sqlite3_bind_int64(a, 9, e.input);
  sqlite3_bind_int64(a, 10, e.output);
  bind_text(a, 11, e.request_id);
  bind_text(a, 12, prev);
  bind_text(a, 13, hash);
  bind_text(a, 14, chain_);
  rc = sqlite3_step(a);
  sqlite3_reset(a);
  check(rc, "audit record");
}

int64_t LaneLedger::flush() {
  std::lock_guard<std::mutex> lock(mutex_);  // the connection's only lock (opened NOMUTEX)
  const std::vector<LedgerEntry>& entries = journal_->take();
  if (entries.empty()) {
    journal_->release();
    return 0;
  }
  int64_t seq = seq_;
  std::string prev = hash_, hash;
  exec("BEGIN IMMEDIATE");
  try {
    for (const LedgerEntry& e : entries) {
      ++seq;
      AuditFields f;
      f.seq = seq;
      f.time = e.time;
      f.tenant = e.tenant;
      f.token_id = e.token_id;
      f.client = e.client;
      f.model = e.model;
      f.status = e.status;
      f.reason = e.reason;
      f.input_tokens = e.input;
      f.output_tokens = e.output;
      f.request_id = e.request_id;
      f.prev_hash = prev;
      f.chain = chain_;
      hash = audit_record_hash(f, &scratch_);
      insert(e, seq, prev, hash);
      prev.swap(hash);
    }
    std::string head = std::to_string(seq) + ":" + prev;
    bind_text(head_, 1, head_key_);
    bind_text(head_, 2, head);
    int rc = sqlite3_step(head_);
    sqlite3_reset(head_);
    check(rc, "audit head");
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);  // fails harmlessly when none is open
    throw;
  }
  seq_ = seq;
  hash_ = prev;
  int64_t count = static_cast<int64_t>(entries.size());
  journal_->release();
  return count;
}

}  // namespace llmaas::gw

#else  // built without SQLite

namespace llmaas::gw {

const char* sqlite_version() { return ""; }

LaneLedger::LaneLedger(LaneJournal*, const std::string&, const std::string&, int) {
  throw std::runtime_error("gateway._native was built without SQLite (libsqlite3-dev)");
}

LaneLedger::~LaneLedger() = default;

int64_t LaneLedger::flush() { throw std::logic_error("no ledger"); }

}  // namespace llmaas::gw

#endif

// The native lane's ledger: what records the lane's journal (lane_journal.h) in the store, as
// gateway/tenancy/lane_ledger.py records a killed gateway's at start. Each request the lane served
// under the tenant stages becomes one ledger row (the usage table) and one audit record, chained
// after the last one in an audit chain of the lane's own (its seqs from 1, its head in meta under
// "audit_head:<chain>", as gateway/tenancy/audit.py writes chains: `llmaas audit verify` checks it
// like any other). Rows, records and head go in one transaction; the journal's file is emptied
// only once it committed, so a failed commit (the database locked past its busy timeout, a full
// disk) loses nothing: the same entries are taken again at the next `flush`, with the chain where
// it was before.
//
// Python calls `flush` every tick of the lane (gateway/lane_tenancy.py), with the interpreter's
// lock released: recording here costs ~4 us a request where the interpreter's path cost ~10.
// The database is the store's own file, migrated by Python before; this connection shares
// Python's SQLite library (one copy in the process, so their POSIX locks stay coherent).
//
// Built without SQLite's headers (CMake found no libsqlite3-dev), the constructor throws and
// `sqlite_version` is empty: the lane then leaves the tenant stages to the Python server.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

#include "lane_journal.h"

struct sqlite3;
struct sqlite3_stmt;

namespace llmaas::gw {

class LaneLedger {
 public:
  // Throws std::runtime_error when the database cannot be opened or lacks the schema.
  LaneLedger(LaneJournal* journal, const std::string& db_path, const std::string& chain, int busy_timeout_ms);
  ~LaneLedger();
  LaneLedger(const LaneLedger&) = delete;
  LaneLedger& operator=(const LaneLedger&) = delete;

  // Commits what the journal holds; returns how many requests it recorded. Throws
  // std::runtime_error, recording nothing, when the commit fails.
  int64_t flush();

 private:
  void exec(const char* sql);
  void check(int rc, const char* what);
  void insert(const LedgerEntry& e, int64_t seq, const std::string& prev, const std::string& hash);

  std::mutex mutex_;  // one flush at a time
  LaneJournal* journal_;
  std::string chain_, head_key_;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* usage_ = nullptr;
  sqlite3_stmt* audit_ = nullptr;
  sqlite3_stmt* head_ = nullptr;
  int64_t seq_ = 0;    // of the chain's last committed record
  std::string hash_;   // its hash ("" before the first)
  std::string scratch_;
};

// The SQLite library's version, for Python to check that it is its own ("" built without).
const char* sqlite_version();

}  // namespace llmaas::gw

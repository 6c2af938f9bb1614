/* SQLite's own cost for the rows the native lane's ledger commits a request (bench/ledger_floor.py).
 *
 * The statements are csrc/gateway/lane_ledger.cpp's, prepared once, bound and stepped as it does,
 * in transactions of `batch` requests, with the audit head updated once a transaction; no hashing,
 * no journal: what remains is what any ledger of one usage row and one audit record a request
 * pays SQLite on this machine.
 *
 *   ledger_floor DB MODE REQUESTS BATCH   (MODE: "both" rows a request, or "usage" only)
 * prints "<cpu seconds> <wall seconds>".
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char* kUsageSql =
    "INSERT INTO usage (request_id, time, tenant, token_id, model, input_tokens, cached_input_tokens, "
    "output_tokens, reasoning_tokens, cost_eur, status, latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
static const char* kAuditSql =
    "INSERT INTO audit (seq, time, tenant, token_id, client, model, status, reason, input_tokens, "
    "output_tokens, request_id, prev_hash, hash, chain) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
static const char* kHeadSql = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)";

static void check(sqlite3* db, int rc, const char* what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
  fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
  exit(1);
}

static double cpu_s(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

static double wall_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void text(sqlite3_stmt* s, int at, const char* value) {
  sqlite3_bind_text(s, at, value, (int)strlen(value), SQLITE_STATIC);
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s DB both|usage REQUESTS BATCH\n", argv[0]);
    return 2;
  }
  int audit = strcmp(argv[2], "both") == 0;
  long requests = atol(argv[3]), batch = atol(argv[4]);
  sqlite3* db;
  sqlite3_stmt *usage, *record, *head;
  check(db, sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL), "open");
  check(db, sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL), "pragma");
  check(db, sqlite3_prepare_v3(db, kUsageSql, -1, SQLITE_PREPARE_PERSISTENT, &usage, NULL), "prepare");
  check(db, sqlite3_prepare_v3(db, kAuditSql, -1, SQLITE_PREPARE_PERSISTENT, &record, NULL), "prepare");
  check(db, sqlite3_prepare_v3(db, kHeadSql, -1, SQLITE_PREPARE_PERSISTENT, &head, NULL), "prepare");
  /* A sha256 in hex, as the lane stores both hashes; a request id as the lane's x-request-id. */
  const char* hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  char request_id[64];
  double cpu0 = cpu_s(), wall0 = wall_s(), now = 1.8e9;
  for (long i = 0; i < requests; i += batch) {
    check(db, sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), "begin");
    for (long j = i; j < i + batch && j < requests; ++j) {
      snprintf(request_id, sizeof request_id, "%032lx", 0x5eed0000000000L + j);
      double t = now + j * 2e-5;
      text(usage, 1, request_id);
      sqlite3_bind_double(usage, 2, t);
      text(usage, 3, "bench");
      text(usage, 4, "tok_2kq8v4x9w7m3");
      text(usage, 5, "smollm2:135m");
      sqlite3_bind_int64(usage, 6, 5);
      sqlite3_bind_int64(usage, 7, 0);
      sqlite3_bind_int64(usage, 8, 1);
      sqlite3_bind_int64(usage, 9, 0);
      sqlite3_bind_double(usage, 10, 8.5e-6);
      sqlite3_bind_int64(usage, 11, 200);
      sqlite3_bind_double(usage, 12, 0.0734);
      int rc = sqlite3_step(usage);
      sqlite3_reset(usage);
      check(db, rc, "usage row");
      if (!audit) continue;
      sqlite3_bind_int64(record, 1, j + 1);
      sqlite3_bind_double(record, 2, t);
      text(record, 3, "bench");
      text(record, 4, "tok_2kq8v4x9w7m3");
      text(record, 5, "127.0.0.1");
      text(record, 6, "smollm2:135m");
      sqlite3_bind_int64(record, 7, 200);
      text(record, 8, "ok");
      sqlite3_bind_int64(record, 9, 5);
      sqlite3_bind_int64(record, 10, 1);
      text(record, 11, request_id);
      text(record, 12, hash);
      text(record, 13, hash);
      text(record, 14, "gw-4242-lane");
      rc = sqlite3_step(record);
      sqlite3_reset(record);
      check(db, rc, "audit record");
    }
    text(head, 1, "audit_head:gw-4242-lane");
    text(head, 2, hash);
    int rc = sqlite3_step(head);
    sqlite3_reset(head);
    check(db, rc, "audit head");
    check(db, sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), "commit");
  }
  printf("%.6f %.6f\n", cpu_s() - cpu0, wall_s() - wall0);
  sqlite3_finalize(usage);
  sqlite3_finalize(record);
  sqlite3_finalize(head);
  sqlite3_close_v2(db);
  return 0;
}

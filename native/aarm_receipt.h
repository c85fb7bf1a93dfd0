/*
 * aarm_receipt.h - journal receipts of native fast-path decisions, encoded and chained in C.
 *
 * Why: a fast-path decision costs the C loop a few microseconds, but turning its record
 * into a receipt in Python (JCS text, two SHA-256, the chain) cost ~9 us of CPU each, and
 * on a 2-core host that work competes with the sandbox and the decision loop for the same
 * CPUs: create+unlink ran ~30% slower with it than without it.  Here a run of records is
 * encoded by template and hashed into the chain with no Python per record.
 *
 * The bytes must be exactly what journal/writer.py's Journal._chain_fast would produce
 * (and what `journal verify` re-encodes canonically); tests compare the two on the same
 * records.  A record this code cannot encode (a path or program name that is not valid
 * UTF-8: the general path stores it as {"b64": ...}) stops the run; Python encodes it.
 */
#ifndef AARM_RECEIPT_H
#define AARM_RECEIPT_H

#include <stddef.h>
#include <stdint.h>

#include "aarm_fastpath.h"

/* Packed record: this header, then exe_len bytes of exe, then path_len bytes of path,
 * padded to a multiple of 8.  (A ring record is 4.9 KiB, mostly unused; queued receipts
 * wait in this form.) */
struct aarm_packed_record {
    uint64_t ts_ns;
    uint64_t notif_id;
    int64_t result;
    uint32_t tid;
    int32_t nr;
    int32_t kind;
    uint32_t flags;
    uint32_t performed;
    uint32_t exe_len;            /* 0: unknown program (JSON null) */
    uint32_t path_len;
    uint32_t pad;
};

/* Worst case packed size of one record (the caller's buffer: n times this). */
#define AARM_PACKED_RECORD_MAX (sizeof(struct aarm_packed_record) + AARM_FAST_RECORD_EXE_MAX + \
                                AARM_FAST_RECORD_PATH_MAX + 8)
/* Worst case receipt line: every path/exe byte escaped as \u00XX, plus the template. */
#define AARM_RECEIPT_LINE_MAX (6 * (AARM_FAST_RECORD_EXE_MAX + AARM_FAST_RECORD_PATH_MAX) + 16384)

/* The fixed parts of every fast-path receipt of a session (JCS-encoded by Python once). */
struct aarm_receipt_tmpl {
    const char *sid;                 /* session id, inserted between quotes as is */
    uint32_t sid_len;
    const char *identity_j;          /* JCS object, exe known */
    uint32_t identity_len;
    const char *identity_no_exe_j;   /* JCS object, exe unknown */
    uint32_t identity_no_exe_len;
    const char *policy_j;
    uint32_t policy_len;
    const char *reason_j[AARM_FAST_NKINDS];     /* JCS strings */
    uint32_t reason_len[AARM_FAST_NKINDS];
    const char *type_name[AARM_FAST_NKINDS];    /* "file.write", ... */
    const char *const *syscall_name; /* by number; NULL entry: the number is written */
    uint32_t nsyscall;
    const char *const *errno_name;   /* by number; NULL entry: the number is written */
    uint32_t nerrno;
};

/* The journal's chain head, handed in and out by the writer (Python owns it between
 * calls).  clock_*: the cached "YYYY-MM-DDTHH:MM:SS" of the last second formatted. */
struct aarm_chain_state {
    uint64_t seq;
    uint64_t since_checkpoint;
    uint8_t prev[32];
    uint8_t context[32];
    int64_t clock_sec;
    char clock_prefix[24];
};

/* Pack n ring records into out (capacity cap, at least n * AARM_PACKED_RECORD_MAX).
 * Returns the bytes written. */
size_t aarm_receipt_pack(const struct aarm_fast_record *recs, uint32_t n, char *out, size_t cap);

/* Encode and chain packed records starting at *offset: at most max_records of them, into
 * out (capacity cap >= AARM_RECEIPT_LINE_MAX); whole lines, grouped into chunks of at most
 * chunk_bytes each (a longer line is a chunk alone): chunk_ends[i] is the end offset of
 * chunk i, at most max_chunks of them (the run stops before a line that would need one
 * more).  Advances *offset past every record encoded and sets *encoded to their count.
 * Returns the bytes written, or -1 when the record at *offset cannot be encoded here (not
 * UTF-8) and nothing was written before it; it stops before such a record otherwise. */
int64_t aarm_receipt_chain(struct aarm_chain_state *st, const struct aarm_receipt_tmpl *t,
                           const char *packed, size_t packed_len, size_t *offset,
                           uint32_t max_records, char *out, size_t cap, uint32_t chunk_bytes,
                           uint32_t *chunk_ends, uint32_t max_chunks, uint32_t *nchunks,
                           uint32_t *encoded);

#endif /* AARM_RECEIPT_H */

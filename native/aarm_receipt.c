/*
 * aarm_receipt.c - fast-path receipts encoded by template and chained (see aarm_receipt.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <string.h>
#include <time.h>

#include <pthread.h>

#include <openssl/evp.h>

#include "aarm_receipt.h"

static const char HEX[] = "0123456789abcdef";

/* SHA-256 through a digest fetched once and a context reused for a whole run: OpenSSL 3's
 * one-shot SHA256() fetches the algorithm on every call (a lock and a name lookup, more
 * than the hashing of a receipt itself). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static int sha256(EVP_MD_CTX *ctx, const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 0;
    return EVP_DigestInit_ex2(ctx, sha256_md, NULL) == 1 &&
           EVP_DigestUpdate(ctx, data, len) == 1 &&
           EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == 32 ? 0 : -1;
}

size_t aarm_receipt_pack(const struct aarm_fast_record *recs, uint32_t n, char *out, size_t cap)
{
    size_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct aarm_fast_record *r = &recs[i];
        uint32_t el = r->exe_len <= AARM_FAST_RECORD_EXE_MAX ? r->exe_len : 0;
        uint32_t pl = r->path_len <= AARM_FAST_RECORD_PATH_MAX ? r->path_len : AARM_FAST_RECORD_PATH_MAX;
        size_t size = (sizeof(struct aarm_packed_record) + el + pl + 7) & ~(size_t)7;
        if (pos + size > cap)
            break;
        struct aarm_packed_record h = {
            .ts_ns = r->ts_ns, .notif_id = r->notif_id, .result = r->result, .tid = r->tid,
            .nr = r->nr, .kind = r->kind, .flags = r->flags, .performed = r->performed,
            .exe_len = el, .path_len = pl, .pad = 0,
        };
        memcpy(out + pos, &h, sizeof h);
        memcpy(out + pos + sizeof h, r->exe, el);
        memcpy(out + pos + sizeof h + el, r->path, pl);
        memset(out + pos + sizeof h + el + pl, 0, size - sizeof h - el - pl);
        pos += size;
    }
    return pos;
}

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates,
 * at most U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0)
            return 0;                   /* overlong */
        if (c == 0xED && s[1] >= 0xA0)
            return 0;                   /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90)
            return 0;                   /* overlong */
        if (c == 0xF4 && s[1] >= 0x90)
            return 0;                   /* above U+10FFFF */
        return 4;
    }
    return 0;
}

/* A JSON string as JCS (and Python's json encode_basestring) writes it: '"' and '\\'
 * escaped, \b \t \n \f \r by name, other controls as \u00xx, everything else as is.
 * Returns the bytes written, or -1 when s is not valid UTF-8. */
static int64_t put_json_str(char *out, const unsigned char *s, size_t n)
{
    char *o = out;
    *o++ = '"';
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c >= 0x80) {
            size_t k = utf8_seq(s + i, n - i);
            if (!k)
                return -1;
            memcpy(o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            *o++ = '\\';
            switch (c) {
            case '\b': *o++ = 'b'; break;
            case '\t': *o++ = 't'; break;
            case '\n': *o++ = 'n'; break;
            case '\f': *o++ = 'f'; break;
            case '\r': *o++ = 'r'; break;
            default:
                memcpy(o, "u00", 3);
                o[3] = HEX[c >> 4];
                o[4] = HEX[c & 15];
                o += 5;
            }
        } else {
            *o++ = (char)c;
        }
        i++;
    }
    *o++ = '"';
    return o - out;
}

static char *put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static char *put_u64(char *o, uint64_t v)
{
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (k)
        *o++ = tmp[--k];
    return o;
}

static char *put_i64(char *o, int64_t v)
{
    if (v < 0) {
        *o++ = '-';
        return put_u64(o, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(o, (uint64_t)v);
}

static char *put_hex(char *o, const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        *o++ = HEX[d[i] >> 4];
        *o++ = HEX[d[i] & 15];
    }
    return o;
}

/* Python's oct(): "0o" and the octal digits ("0o0" for zero). */
static char *put_oct(char *o, uint32_t v)
{
    char tmp[16];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + (v & 7));
        v >>= 3;
    } while (v);
    *o++ = '0';
    *o++ = 'o';
    while (k)
        *o++ = tmp[--k];
    return o;
}

/* A name from a table, or the number (as Python's dict.get(n, str(n))). */
static char *put_name(char *o, const char *const *names, uint32_t count, int64_t v)
{
    if (v >= 0 && (uint64_t)v < count && names[v])
        return put(o, names[v], strlen(names[v]));
    return put_i64(o, v);
}

/* The errno of a negative result: its magnitude, named when the table has it (unsigned:
 * INT64_MIN has no positive int64). */
static char *put_errno(char *o, const struct aarm_receipt_tmpl *t, int64_t result)
{
    uint64_t e = (uint64_t)0 - (uint64_t)result;
    if (e < t->nerrno && t->errno_name[e])
        return put(o, t->errno_name[e], strlen(t->errno_name[e]));
    return put_u64(o, e);
}

/* RFC 3339 UTC with microseconds, as the writer's _Clock formats it. */
static char *put_ts(char *o, struct aarm_chain_state *st, uint64_t ns)
{
    uint64_t us_total = ns / 1000;
    int64_t sec = (int64_t)(us_total / 1000000);
    unsigned us = (unsigned)(us_total % 1000000);
    if (sec != st->clock_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (!gmtime_r(&t, &tm) ||
            strftime(st->clock_prefix, sizeof st->clock_prefix, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            st->clock_prefix[0] = '\0';
        st->clock_sec = sec;
    }
    o = put(o, st->clock_prefix, strlen(st->clock_prefix));
    *o++ = '.';
    for (int d = 100000; d; d /= 10)
        *o++ = (char)('0' + us / d % 10);
    *o++ = 'Z';
    return o;
}

/* One receipt line at out; returns its length or -1 (not encodable here). */
static int64_t encode_one(EVP_MD_CTX *md, struct aarm_chain_state *st,
                          const struct aarm_receipt_tmpl *t,
                          const struct aarm_packed_record *h, const unsigned char *exe,
                          const unsigned char *path, char *out)
{
    int kind = h->kind;
    if (kind < 0 || kind >= AARM_FAST_NKINDS || !t->type_name[kind] || !t->reason_j[kind])
        return -1;
    int executed = h->performed != 0;
    uint64_t seq = st->seq + 1;
    char *o = out;
    int64_t k;

    o = PUT_LIT(o, "{\"action\":{");
    if (kind == AARM_FAST_DELETE)
        o = (h->flags & 0x200) ? PUT_LIT(o, "\"directory\":true,") : PUT_LIT(o, "\"directory\":false,");
    o = PUT_LIT(o, "\"exe\":");
    if (h->exe_len) {
        if ((k = put_json_str(o, exe, h->exe_len)) < 0)
            return -1;
        o += k;
    } else {
        o = PUT_LIT(o, "null");
    }
    if (kind == AARM_FAST_CHMOD) {
        o = PUT_LIT(o, ",\"mode\":\"");
        o = put_oct(o, h->flags);
        *o++ = '"';
    } else if (h->flags) {
        o = PUT_LIT(o, ",\"flags\":");
        o = put_u64(o, h->flags);
    }
    o = PUT_LIT(o, ",\"notif\":\"");
    o = put_u64(o, h->notif_id);
    o = PUT_LIT(o, "\",\"pid\":");
    o = put_u64(o, h->tid);
    o = PUT_LIT(o, ",\"syscall\":\"");
    o = put_name(o, t->syscall_name, t->nsyscall, h->nr);
    o = PUT_LIT(o, "\",\"target\":");
    if ((k = put_json_str(o, path, h->path_len)) < 0)
        return -1;
    o += k;
    o = PUT_LIT(o, ",\"tid\":");
    o = put_u64(o, h->tid);
    o = PUT_LIT(o, ",\"type\":\"");
    o = put(o, t->type_name[kind], strlen(t->type_name[kind]));
    o = PUT_LIT(o, "\"},\"context_hash\":\"");
    o = put_hex(o, st->context, 32);
    o = PUT_LIT(o, "\",\"decision\":{\"policy\":");
    o = put(o, t->policy_j, t->policy_len);
    o = PUT_LIT(o, ",\"reason\":");
    o = put(o, t->reason_j[kind], t->reason_len[kind]);
    o = PUT_LIT(o, ",\"result\":\"allow\",\"rule\":\"default\"},\"fast_path\":true,\"identity\":");
    o = h->exe_len ? put(o, t->identity_j, t->identity_len)
                   : put(o, t->identity_no_exe_j, t->identity_no_exe_len);
    o = PUT_LIT(o, ",\"outcome\":{");
    if (h->result < 0) {
        o = PUT_LIT(o, "\"errno\":\"");
        o = put_errno(o, t, h->result);
        o = PUT_LIT(o, "\",");
    }
    o = executed ? PUT_LIT(o, "\"executed\":true") : PUT_LIT(o, "\"executed\":false");
    o = PUT_LIT(o, ",\"return\":");
    o = put_i64(o, h->result);
    o = PUT_LIT(o, "},\"prev_hash\":\"");
    o = put_hex(o, st->prev, 32);
    o = PUT_LIT(o, "\",\"receipt_id\":\"");
    o = put(o, t->sid, t->sid_len);
    *o++ = ':';
    o = put_u64(o, seq);
    o = PUT_LIT(o, "\",\"seq\":");
    o = put_u64(o, seq);
    o = PUT_LIT(o, ",\"session_id\":\"");
    o = put(o, t->sid, t->sid_len);
    o = PUT_LIT(o, "\",\"ts\":\"");
    o = put_ts(o, st, h->ts_ns);
    o = PUT_LIT(o, "\",\"type\":\"receipt\",\"v\":1}");

    /* The chain: the hash of the body (JCS, closing brace included) is appended to it as
     * the line's last member, and an executed action also extends the context chain. */
    uint8_t digest[32];
    if (sha256(md, out, (size_t)(o - out), digest) < 0)
        return -1;
    o--;                                /* the body's closing brace */
    o = PUT_LIT(o, ",\"hash\":\"");
    o = put_hex(o, digest, 32);
    o = PUT_LIT(o, "\"}\n");
    if (executed) {
        uint8_t both[64];
        memcpy(both, st->context, 32);
        memcpy(both + 32, digest, 32);
        if (sha256(md, both, sizeof both, st->context) < 0)
            return -1;
    }
    memcpy(st->prev, digest, 32);
    st->seq = seq;
    st->since_checkpoint++;
    return o - out;
}

int64_t aarm_receipt_chain(struct aarm_chain_state *st, const struct aarm_receipt_tmpl *t,
                           const char *packed, size_t packed_len, size_t *offset,
                           uint32_t max_records, char *out, size_t cap, uint32_t chunk_bytes,
                           uint32_t *chunk_ends, uint32_t max_chunks, uint32_t *nchunks,
                           uint32_t *encoded)
{
    size_t pos = 0, chunk_start = 0;
    uint32_t chunks = 0, done = 0;
    *nchunks = 0;
    *encoded = 0;
    if (cap < AARM_RECEIPT_LINE_MAX || max_chunks == 0)
        return 0;
    pthread_once(&sha256_once, fetch_sha256);
    EVP_MD_CTX *md = sha256_md ? EVP_MD_CTX_new() : NULL;
    if (!md)
        return -1;                      /* no SHA-256 here: Python encodes (hashlib) */
    while (done < max_records && *offset + sizeof(struct aarm_packed_record) <= packed_len) {
        struct aarm_packed_record h;
        memcpy(&h, packed + *offset, sizeof h);
        size_t size = (sizeof h + h.exe_len + h.path_len + 7) & ~(size_t)7;
        if (h.exe_len > AARM_FAST_RECORD_EXE_MAX || h.path_len > AARM_FAST_RECORD_PATH_MAX ||
            *offset + size > packed_len)
            break;                      /* malformed: never produced by aarm_receipt_pack */
        if (cap - pos < AARM_RECEIPT_LINE_MAX)
            break;
        const unsigned char *exe = (const unsigned char *)packed + *offset + sizeof h;
        struct aarm_chain_state saved = *st;
        int64_t len = encode_one(md, st, t, &h, exe, exe + h.exe_len, out + pos);
        if (len < 0) {
            *st = saved;
            if (!done) {
                EVP_MD_CTX_free(md);
                return -1;
            }
            break;
        }
        /* the line joins the current chunk, or starts the next one */
        if (pos > chunk_start && pos + (size_t)len - chunk_start > chunk_bytes) {
            if (chunks + 1 >= max_chunks) {
                *st = saved;            /* no chunk left for it: not encoded */
                break;
            }
            chunk_ends[chunks++] = (uint32_t)pos;
            chunk_start = pos;
        }
        pos += (size_t)len;
        *offset += size;
        done++;
    }
    if (pos > chunk_start)
        chunk_ends[chunks++] = (uint32_t)pos;
    EVP_MD_CTX_free(md);
    *nchunks = chunks;
    *encoded = done;
    return (int64_t)pos;
}

/* Intent lines through a shared mapping of the intents file.
 *
 * An intent line must be in the file before the destructive operation it announces is
 * performed, so that a supervisor killed between the two still leaves a trace.  A line
 * stored into a MAP_SHARED mapping is in the file's page cache the moment the store
 * completes - exactly what a returned write(2) guarantees - without the system call
 * (~0.5 us of every delete the fast path performs).  Both survive the death of the
 * process; neither is on disk before the journal's fsync.
 *
 * The file is grown in chunks with fallocate(2) (extending it, with the blocks reserved),
 * so a full disk is an error of the append, never a SIGBUS of a store into a hole.
 * Until aarm_intent_log_close() trims it, the file ends in zero bytes after its last
 * line: readers stop at the first NUL (the tail of a session that did not end).
 * All appends are whole lines, in order, under one mutex (the decision threads of C and
 * Python share a log). */
#ifndef AARM_INTENTLOG_H
#define AARM_INTENTLOG_H

#include <stddef.h>

struct aarm_intent_log;

/* fd: an empty regular file open for reading and writing (dup'ed; the caller keeps its
 * own).  NULL + errno when the file cannot be used this way (not regular, not empty,
 * not on ext2/3/4, XFS or tmpfs or without fallocate - EOPNOTSUPP -, no space, mmap
 * refused): write(2) it then.  Nobody but the supervisor may truncate the file (a store
 * past a shortened end raises SIGBUS): the sandbox never sees it (masked). */
struct aarm_intent_log *aarm_intent_log_new(int fd);
/* 0, or -errno with nothing written (the operation must not be performed): -ENOSPC,
 * -EFBIG, -EBADF once closed, the first growth error again after one. */
int aarm_intent_log_append(struct aarm_intent_log *log, const char *line, size_t len);
/* Bytes of whole lines appended so far. */
size_t aarm_intent_log_used(struct aarm_intent_log *log);
/* Trims the file to its lines and unmaps it; later appends fail with -EBADF.  The
 * structure itself is never freed: a fast path of the session may still hold it. */
int aarm_intent_log_close(struct aarm_intent_log *log);

#endif /* AARM_INTENTLOG_H */

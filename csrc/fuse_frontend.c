/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The FUSE file frontend: one resource as one regular file in a FUSE mount (libfuse3, low-level
 * API), for kernels without NBD. replica.fuse_device attaches a loop device to the file; ext4 on
 * that loop device reaches this file through the kernel's FUSE requests:
 *
 *   ext4 -> /dev/loopN (direct I/O) -> FUSE_WRITE / FUSE_READ / FUSE_FSYNC / FUSE_FALLOCATE
 *        -> worker thread here -> request_submit / request_read (request layer) -> disk + peer
 *
 * A frontend: it parses its protocol (libfuse does) and calls only the request layer. Every
 * request is answered by the worker thread that read it, after the request layer completed it:
 * a write waits in its worker for its origin (the local write, and under protocol B/C the
 * peer's ack, delivered by the receiver thread through complete()/release()), so concurrency
 * is the number of workers. The receiver thread never writes to /dev/fuse.
 *
 *   FUSE request            request layer                     answer
 *   READ                    request_read                      data, or -errno
 *   WRITE                   request_submit(RM_OP_WRITE)       count; EPERM (read-only) -> EROFS
 *   FSYNC                   request_submit(RM_OP_FLUSH)       under protocol C: the peer's stable
 *                                                             storage has it before we answer
 *   FALLOCATE PUNCH_HOLE    request_submit(RM_OP_TRIM)        (with KEEP_SIZE, as loop sends it)
 *   FALLOCATE ZERO_RANGE    request_submit(RM_OP_ZERO)
 *   SETATTR size            refused: EPERM (the export's size is the disk's)
 *   FLUSH (close), RELEASE  0: durability is fsync's, as on any file
 *
 * Threads: rm_fuse_start mounts and starts `nthreads` workers, each blocking in read() on the
 * session's /dev/fuse fd (the kernel wakes one reader per request) and returns. We run our own
 * workers instead of fuse_session_loop_mt because its loop can only be ended by the kernel
 * ending the connection, and while a loop device (or ext4 above it) still holds the file after
 * a lazy unmount, that never happens without fusectl: stop would hang. Here rm_fuse_stop
 * cancels the workers (cancellation is enabled only while a worker waits in read, as libfuse's
 * own loop does, so none is cancelled mid-request; a worker waiting for the peer finishes
 * first, bounded by the link's timeout), joins them, closes the fd (the last /dev/fuse fd of a
 * connection aborts it in the kernel, so whatever still holds the file, the loop device, gets
 * errors instead of hanging) and detaches the mount lazily. */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "request.h"

#define FILE_INO 2
#define MAX_THREADS 256
#define ATTR_TIMEOUT_S 86400.0
/* Async direct I/O from the loop device is "background" to FUSE: at most this many in flight
 * (the kernel's default, 12, would cap queue depth 32 below the worker count). */
#define MAX_BACKGROUND 128

struct rm_fuse {
    rm_engine *eng;
    struct fuse_session *se;
    char *mountpoint;
    char *filename;
    uint64_t size;             /* atomic: rm_fuse_set_size changes it (online resize) */
    uint32_t max_write;
    int direct_io;
    int mounted;
    unsigned nthreads;
    pthread_t *threads;
    rm_fuse_stats stats;       /* relaxed atomics */
};

#define FSTAT_ADD(f, field, n) __atomic_fetch_add(&(f)->stats.field, (n), __ATOMIC_RELAXED)

static rm_fuse *fuse_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

/* Every answer goes through these two: they count errors and keep inflight. */
static void reply_err(rm_fuse *f, fuse_req_t req, int err)
{
    if (err)
        FSTAT_ADD(f, errors, 1);
    fuse_reply_err(req, err);
}

static void refuse(rm_fuse *f, fuse_req_t req, int err)
{
    request_count_refused(f->eng);
    FSTAT_ADD(f, refused, 1);
    reply_err(f, req, err);
}

static uint64_t fuse_size(rm_fuse *f)
{
    return __atomic_load_n(&f->size, __ATOMIC_ACQUIRE);
}

static void fill_attr(rm_fuse *f, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_blksize = RM_BLOCK_SIZE;
    if (ino == FILE_INO) {
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        uint64_t size = fuse_size(f);
        st->st_size = (off_t)size;
        st->st_blocks = (blkcnt_t)(size / 512);
    } else {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    }
}

static void enter(rm_fuse *f)
{
    uint64_t n = __atomic_add_fetch(&f->stats.inflight, 1, __ATOMIC_RELAXED);
    uint64_t max = __atomic_load_n(&f->stats.inflight_max, __ATOMIC_RELAXED);

    FSTAT_ADD(f, requests, 1);
    while (n > max && !__atomic_compare_exchange_n(&f->stats.inflight_max, &max, n, 0, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED))
        ;
}

static void leave(rm_fuse *f)
{
    __atomic_sub_fetch(&f->stats.inflight, 1, __ATOMIC_RELAXED);
}

/* ---- an origin that wakes the worker thread waiting for its one answer ---- */

struct wait_origin {
    struct rm_origin origin;   /* first */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    int rc;
};

static void wait_complete(struct rm_origin *o, const unsigned char cookie[8], int rc)
{
    struct wait_origin *w = (struct wait_origin *)o;

    (void)cookie;
    pthread_mutex_lock(&w->lock);
    w->rc = rc;
    w->done = 1;
    pthread_mutex_unlock(&w->lock);
}

static void wait_release(struct rm_origin *o, int n)
{
    struct wait_origin *w = (struct wait_origin *)o;

    pthread_mutex_lock(&w->lock);
    __atomic_sub_fetch(&o->inflight, n, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);   /* the waiter leaves only after taking the lock */
}

/* Submit one request and wait for its completion (local, and the peer's per protocol). */
static int submit_wait(rm_fuse *f, const struct rm_request *req)
{
    struct wait_origin w = { .origin = { .complete = wait_complete, .release = wait_release } };
    int rc = 0;

    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    if (request_submit(f->eng, &w.origin, NULL, req, NULL, &rc) == RM_SUBMIT_LATER) {
        request_flush_peer(f->eng);
        pthread_mutex_lock(&w.lock);
        while (!w.done || __atomic_load_n(&w.origin.inflight, __ATOMIC_ACQUIRE) > 0)
            pthread_cond_wait(&w.cond, &w.lock);
        rc = w.rc;
        pthread_mutex_unlock(&w.lock);
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return rc;
}

/* A request that changes the disk: EPERM from the request layer means read-only here. */
static int write_errno(rm_fuse *f, int rc)
{
    if (rc == -EPERM) {
        FSTAT_ADD(f, refused, 1);
        return EROFS;
    }
    return -rc;
}

/* ---- operations ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    rm_fuse *f = userdata;

    conn->max_write = f->max_write;
    conn->max_background = MAX_BACKGROUND;
    conn->congestion_threshold = MAX_BACKGROUND * 3 / 4;
    /* Measured: the writeback cache reorders writes against fsync and is slower (issue 11). */
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    rm_fuse *f = fuse_of(req);
    struct fuse_entry_param e = { .ino = FILE_INO, .attr_timeout = ATTR_TIMEOUT_S,
                                  .entry_timeout = ATTR_TIMEOUT_S };

    if (parent != FUSE_ROOT_ID || strcmp(name, f->filename) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_attr(f, FILE_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;

    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_attr(fuse_of(req), ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT_S);
}

/* The size is the disk's, and owner and mode are ours: only time updates pass (ignored). */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    struct stat st;

    (void)fi;
    if (ino != FILE_INO && ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if ((to_set & FUSE_SET_ATTR_SIZE) && (ino != FILE_INO || (uint64_t)attr->st_size != fuse_size(f))) {
        refuse(f, req, EPERM);
        return;
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        refuse(f, req, EPERM);
        return;
    }
    fill_attr(f, ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT_S);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);

    if (ino != FILE_INO) {
        fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
        return;
    }
    if (fi->flags & O_TRUNC) {
        refuse(f, req, EPERM);
        return;
    }
    fi->keep_cache = 0;
    fi->direct_io = f->direct_io != 0;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    uint64_t end = fuse_size(f);
    void *buf;
    int rc;

    (void)fi;
    if (ino != FILE_INO || off < 0) {
        reply_err(f, req, EINVAL);
        return;
    }
    /* A regular file: short read at the end, nothing past it. */
    if ((uint64_t)off >= end) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > end - (uint64_t)off)
        size = (size_t)(end - (uint64_t)off);
    if (size > RM_MAX_REQUEST)
        size = RM_MAX_REQUEST;
    enter(f);
    buf = malloc(size ? size : 1);
    if (!buf) {
        reply_err(f, req, ENOMEM);
    } else if ((rc = request_read(f->eng, buf, (uint32_t)size, (uint64_t)off)) < 0) {
        reply_err(f, req, -rc);
    } else {
        fuse_reply_buf(req, buf, size);
    }
    free(buf);
    leave(f);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    int rc;

    (void)fi;
    if (ino != FILE_INO || off < 0 || size > RM_MAX_REQUEST) {
        refuse(f, req, EINVAL);
        return;
    }
    enter(f);
    rc = submit_wait(f, &(struct rm_request){ .op = RM_OP_WRITE, .offset = (uint64_t)off,
                                              .count = (uint32_t)size, .data = data });
    if (rc < 0)
        reply_err(f, req, write_errno(f, rc));
    else
        fuse_reply_write(req, size);
    leave(f);
}

/* fsync and fdatasync alike: everything written before is on stable storage here and, under
 * protocol C, on the peer's, when this answers. */
static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    int rc;

    (void)ino;
    (void)datasync;
    (void)fi;
    enter(f);
    rc = submit_wait(f, &(struct rm_request){ .op = RM_OP_FLUSH });
    reply_err(f, req, rc < 0 ? -rc : 0);
    leave(f);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    (void)fi;
    fuse_reply_err(req, 0);   /* the directory never changes */
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);   /* close(2): durability is fsync's, as on any file */
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                         struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    struct rm_request r = { 0 };
    uint64_t pos, end;
    int rc = 0;

    (void)fi;
    if (ino != FILE_INO || off < 0 || length <= 0) {
        refuse(f, req, EINVAL);
        return;
    }
    if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        r.op = RM_OP_TRIM;
        r.may_trim = 1;
    } else if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
        r.op = RM_OP_ZERO;
        r.may_trim = 1;
    } else if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
        /* preallocation: every block of the disk exists already; growing it does not */
        if ((uint64_t)off + (uint64_t)length > fuse_size(f) && mode == 0)
            refuse(f, req, EFBIG);
        else
            fuse_reply_err(req, 0);
        return;
    } else {
        /* not ENOSYS: that would turn fallocate off for good in the kernel */
        refuse(f, req, EOPNOTSUPP);
        return;
    }
    enter(f);
    /* One request per RM_MAX_REQUEST bytes: the peer frame's count is 32 bits. */
    end = (uint64_t)off + (uint64_t)length;
    for (pos = (uint64_t)off; pos < end && rc == 0; pos += r.count) {
        r.offset = pos;
        r.count = (uint32_t)(end - pos > RM_MAX_REQUEST ? RM_MAX_REQUEST : end - pos);
        rc = submit_wait(f, &r);
    }
    reply_err(f, req, rc < 0 ? write_errno(f, rc) : 0);
    leave(f);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    rm_fuse *f = fuse_of(req);
    struct statvfs sv = { .f_bsize = RM_BLOCK_SIZE, .f_frsize = RM_BLOCK_SIZE,
                          .f_blocks = fuse_size(f) / RM_BLOCK_SIZE, .f_files = 2, .f_namemax = 255 };

    (void)ino;
    fuse_reply_statfs(req, &sv);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    rm_fuse *f = fuse_of(req);
    const char *names[] = { ".", "..", f->filename };
    fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, FILE_INO };
    char buf[1024];
    size_t used = 0;

    (void)fi;
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    if (size > sizeof buf)
        size = sizeof buf;
    for (off_t i = off; i < 3; i++) {
        struct stat st = { .st_ino = inos[i], .st_mode = i == 2 ? S_IFREG : S_IFDIR };
        size_t n = fuse_add_direntry(req, buf + used, size - used, names[i], &st, i + 1);
        if (n > size - used)
            break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops OPS = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fsyncdir = op_fsyncdir,
    .readdir = op_readdir,
    .statfs = op_statfs,
    .fallocate = op_fallocate,
};

/* ---- workers ---- */

static void free_buf(void *arg)
{
    struct fuse_buf *buf = arg;

    free(buf->mem);
    buf->mem = NULL;
}

static void *worker_main(void *arg)
{
    rm_fuse *f = arg;
    struct fuse_buf buf = { 0 };
    int old;

    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    pthread_cleanup_push(free_buf, &buf);
    while (!fuse_session_exited(f->se)) {
        int res;

        /* The only place a worker may be cancelled: waiting for the kernel's next request. */
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
        res = fuse_session_receive_buf(f->se, &buf);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
        if (res == -EINTR || res == -EAGAIN)
            continue;
        if (res <= 0) {
            /* 0: unmounted or aborted (ENODEV); < 0: the device failed */
            fuse_session_exit(f->se);
            break;
        }
        fuse_session_process_buf(f->se, &buf);
    }
    pthread_cleanup_pop(1);
    return NULL;
}

/* ---- the contract ---- */

static void free_fuse(rm_fuse *f)
{
    free(f->threads);
    free(f->mountpoint);
    free(f->filename);
    free(f);
}

int rm_fuse_start(rm_engine *eng, const char *mountpoint, const char *filename, uint64_t size, uint32_t max_write,
                  uint32_t nthreads, int direct_io, rm_fuse **out)
{
    char opts[256];
    char *argv[] = { "replica", "-o", opts, NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    sigset_t all, old;
    rm_fuse *f;
    int rc = 0;

    *out = NULL;
    if (!filename[0] || strchr(filename, '/') || nthreads == 0 || nthreads > MAX_THREADS || max_write < 4096 ||
        max_write > 1048576 || size == 0)
        return -EINVAL;
    if (snprintf(opts, sizeof opts, "fsname=replica,subtype=replica,default_permissions") >= (int)sizeof opts)
        return -EINVAL;
    f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->eng = eng;
    f->size = size;
    f->max_write = max_write;
    f->direct_io = direct_io;
    f->mountpoint = strdup(mountpoint);
    f->filename = strdup(filename);
    f->threads = calloc(nthreads, sizeof *f->threads);
    if (!f->mountpoint || !f->filename || !f->threads) {
        free_fuse(f);
        return -ENOMEM;
    }
    f->se = fuse_session_new(&args, &OPS, sizeof OPS, f);
    fuse_opt_free_args(&args);
    if (!f->se) {
        free_fuse(f);
        return -EINVAL;
    }
    if (fuse_session_mount(f->se, f->mountpoint) != 0) {
        rc = errno ? -errno : -EIO;
        fuse_session_destroy(f->se);
        free_fuse(f);
        return rc;
    }
    f->mounted = 1;
    /* Workers take no signal: Python's handlers run on its main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (; f->nthreads < nthreads; f->nthreads++) {
        int e = pthread_create(&f->threads[f->nthreads], NULL, worker_main, f);
        if (e) {
            rc = -e;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        rm_fuse_stop(f);
        return rc;
    }
    f->stats.threads = f->nthreads;
    *out = f;
    return 0;
}

int rm_fuse_stop(rm_fuse *f)
{
    if (!f)
        return 0;
    /* Workers first (none is cancelled mid-request), then libfuse's unmount: it closes the fd,
     * which aborts the connection (whatever still holds the file gets ENOTCONN from now on),
     * then detaches the mount lazily (MNT_DETACH: a loop device or ext4 may still hold it). */
    fuse_session_exit(f->se);
    for (unsigned i = 0; i < f->nthreads; i++)
        pthread_cancel(f->threads[i]);
    for (unsigned i = 0; i < f->nthreads; i++)
        pthread_join(f->threads[i], NULL);
    if (f->mounted)
        fuse_session_unmount(f->se);
    fuse_session_destroy(f->se);
    free_fuse(f);
    return 0;
}

/* Online resize: the file's size is the engine's new size from now on; the kernel's cached
 * attributes of the file are dropped, so the next stat (and LOOP_SET_CAPACITY after it) sees it. */
int rm_fuse_set_size(rm_fuse *f, uint64_t size)
{
    if (size == 0)
        return -EINVAL;
    __atomic_store_n(&f->size, size, __ATOMIC_RELEASE);
    return fuse_lowlevel_notify_inval_inode(f->se, FILE_INO, -1, 0);   /* attributes only */
}

void rm_fuse_get_stats(rm_fuse *f, rm_fuse_stats *out)
{
    out->requests = __atomic_load_n(&f->stats.requests, __ATOMIC_RELAXED);
    out->errors = __atomic_load_n(&f->stats.errors, __ATOMIC_RELAXED);
    out->refused = __atomic_load_n(&f->stats.refused, __ATOMIC_RELAXED);
    out->inflight = __atomic_load_n(&f->stats.inflight, __ATOMIC_RELAXED);
    out->inflight_max = __atomic_load_n(&f->stats.inflight_max, __ATOMIC_RELAXED);
    out->threads = f->stats.threads;
}

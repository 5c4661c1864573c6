/* SPDX-License-Identifier: GPL-2.0-or-later */
/* TLS for the data path, with OpenSSL: contexts (certificates, CA, PSK), the handshake on a
 * socket Python connected, and the locked record I/O that transport_tls.c turns into ops.
 *
 * Why in C: this kernel has no kTLS (no "tls" ULP), so after the handshake every record is
 * sealed and opened by user space; doing that per request in Python would put the interpreter
 * back on the hot path. Python only builds contexts and runs the handshake (rm_tls_handshake
 * blocks without the GIL), then hands the session to C with the fd.
 *
 *   rm_tls_ctx_new ──► rm_tls_handshake(fd) ──► [rm_tls_read_exact/write_all: rest of a
 *                        │ (SSL_do_handshake,        Python handshake] ──► transport_tls_init
 *                        │  poll, deadline)          (connection.c, frontends) ──► rm_tls_close
 *                        └─ NULL + one-line reason ("certificate verify failed: ...")
 *
 * Concurrency (tls.h): one mutex per session around every SSL_* call, the fd non-blocking,
 * poll(2) outside the mutex on SSL_ERROR_WANT_READ/WANT_WRITE. No session tickets are issued
 * (nothing resumes) so no record is written behind a reader's back after the handshake.
 * Minimum TLS 1.2; TLS 1.3 is negotiated whenever both ends have it (OpenSSL 3 prefers it).
 *
 * OpenSSL writes with write(2), not send(MSG_NOSIGNAL): a peer gone away raises SIGPIPE, which
 * the Python interpreter ignores (SIG_IGN from its start), so the write fails with EPIPE. A
 * program embedding this without Python must ignore SIGPIPE too.
 *
 * Return convention as the rest of csrc/: 0, a count or -errno; only the handshake and
 * context constructors write a message, into the caller's buffer, for Python's log line. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mirror.h"
#include "tls.h"

#define PSK_MAX 64          /* bytes of one pre-shared key (psktool writes 32) */
#define PSK_IDENTITY_MAX 128
#define RECORD_MAX 16384    /* one TLS record's plaintext */
#define READ_BUFFER (RECORD_MAX + 1024)  /* read-ahead: about a record per read(2); see below */

struct psk_entry {
    char identity[PSK_IDENTITY_MAX + 1];
    unsigned char key[PSK_MAX];
    unsigned keylen;
};

struct rm_tls_ctx {
    SSL_CTX *ssl_ctx;
    int server;
    int verify_peer;
    struct psk_entry *psk;      /* from psk_file */
    unsigned npsk;
    char psk_identity[PSK_IDENTITY_MAX + 1];   /* the client's identity ("" = the file's first) */
};

struct rm_tls {
    SSL *ssl;
    int fd;
    int fd_flags;               /* the fd's flags before the handshake (restored by close) */
    pthread_mutex_t lock;       /* every SSL_* call on ssl, and error */
    char error[256];            /* why the session failed after the handshake ("" if it has not) */
    char psk_identity[PSK_IDENTITY_MAX + 1];   /* the PSK identity used ("" without PSK) */
    pthread_mutex_t wlock;      /* one writer at a time (a frame's records stay together), stage */
    unsigned char stage[RECORD_MAX];   /* MSG_MORE: bytes held for the next write's first record */
    size_t staged;
    unsigned char *pipebuf;     /* tls_pipe_buffer */
    size_t pipebuf_size;
};

static uint64_t ms_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ms left until deadline (0 = none: -1 for poll), 0 when past */
static int ms_left(uint64_t deadline)
{
    uint64_t now;

    if (!deadline)
        return -1;
    now = ms_now();
    return now >= deadline ? 0 : (int)(deadline - now);
}

static uint64_t deadline_after(int timeout_ms)
{
    return timeout_ms < 0 ? 0 : ms_now() + (uint64_t)timeout_ms + 1;
}

/* Wait for the direction OpenSSL asked for. 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, int want_write, uint64_t deadline)
{
    struct pollfd p = { .fd = fd, .events = want_write ? POLLOUT : POLLIN };

    for (;;) {
        int left = ms_left(deadline), n;
        if (deadline && left == 0)
            return -ETIMEDOUT;
        n = poll(&p, 1, left);
        if (n > 0)
            return 0;     /* POLLHUP/POLLERR too: the next SSL call reports what happened */
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

/* ---- the first error in OpenSSL's queue, as a phrase ---- */

static void ssl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_peek_error();
    const char *reason;

    if (!e) {
        snprintf(out, outlen, "unknown error");
        return;
    }
    reason = ERR_reason_error_string(e);
    if (reason)
        snprintf(out, outlen, "%s", reason);
    else
        ERR_error_string_n(e, out, outlen);
}

/* ---- contexts ---- */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "identity:hexkey" per line (qemu's and nbdkit's psktool format); '#' comments, blank lines. */
static int load_psk_file(struct rm_tls_ctx *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char line[1024];
    unsigned lineno = 0;

    if (!f) {
        snprintf(err, errlen, "psk file %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *colon, *hex, *end;
        struct psk_entry *e, *grown;
        size_t idlen, hexlen;

        lineno++;
        end = line + strcspn(line, "\r\n");
        *end = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        colon = strchr(line, ':');
        if (!colon) {
            snprintf(err, errlen, "psk file %s:%u: expected identity:hexkey", path, lineno);
            goto fail;
        }
        idlen = (size_t)(colon - line);
        hex = colon + 1;
        hexlen = strlen(hex);
        if (idlen == 0 || idlen > PSK_IDENTITY_MAX) {
            snprintf(err, errlen, "psk file %s:%u: identity must be 1..%d bytes", path, lineno, PSK_IDENTITY_MAX);
            goto fail;
        }
        if (hexlen == 0 || hexlen % 2 || hexlen / 2 > PSK_MAX) {
            snprintf(err, errlen, "psk file %s:%u: key must be 1..%d bytes of hex", path, lineno, PSK_MAX);
            goto fail;
        }
        grown = realloc(c->psk, (c->npsk + 1) * sizeof *c->psk);
        if (!grown) {
            snprintf(err, errlen, "psk file %s: out of memory", path);
            goto fail;
        }
        c->psk = grown;
        e = &c->psk[c->npsk];
        memset(e, 0, sizeof *e);
        memcpy(e->identity, line, idlen);
        for (size_t i = 0; i < hexlen / 2; i++) {
            int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                snprintf(err, errlen, "psk file %s:%u: key is not hexadecimal", path, lineno);
                goto fail;
            }
            e->key[i] = (unsigned char)(hi << 4 | lo);
        }
        e->keylen = (unsigned)(hexlen / 2);
        c->npsk++;
    }
    fclose(f);
    if (c->npsk == 0) {
        snprintf(err, errlen, "psk file %s: no identity:hexkey line", path);
        return -1;
    }
    return 0;
fail:
    fclose(f);
    return -1;
}

static const struct psk_entry *find_psk(const struct rm_tls_ctx *c, const char *identity)
{
    for (unsigned i = 0; i < c->npsk; i++)
        if (strcmp(c->psk[i].identity, identity) == 0)
            return &c->psk[i];
    return NULL;
}

static void note_identity(SSL *ssl, const char *identity)
{
    struct rm_tls *s = SSL_get_app_data(ssl);

    if (s)
        snprintf(s->psk_identity, sizeof s->psk_identity, "%s", identity);
}

static unsigned psk_client_cb(SSL *ssl, const char *hint, char *identity, unsigned max_identity_len,
                              unsigned char *psk, unsigned max_psk_len)
{
    const struct rm_tls_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    const struct psk_entry *e;

    (void)hint;
    e = c->psk_identity[0] ? find_psk(c, c->psk_identity) : &c->psk[0];
    if (!e || strlen(e->identity) + 1 > max_identity_len || e->keylen > max_psk_len)
        return 0;
    memcpy(identity, e->identity, strlen(e->identity) + 1);
    memcpy(psk, e->key, e->keylen);
    note_identity(ssl, e->identity);
    return e->keylen;
}

static unsigned psk_server_cb(SSL *ssl, const char *identity, unsigned char *psk, unsigned max_psk_len)
{
    const struct rm_tls_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    const struct psk_entry *e = identity ? find_psk(c, identity) : NULL;

    if (!e || e->keylen > max_psk_len)
        return 0;    /* unknown identity: the handshake fails */
    memcpy(psk, e->key, e->keylen);
    note_identity(ssl, e->identity);
    return e->keylen;
}

rm_tls_ctx *rm_tls_ctx_new(int server, const char *certfile, const char *keyfile, const char *cafile,
                           int verify_peer, const char *psk_file, const char *psk_identity, char *err,
                           size_t errlen)
{
    struct rm_tls_ctx *c = calloc(1, sizeof *c);
    char why[256];

    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->server = server;
    c->verify_peer = verify_peer;
    ERR_clear_error();
    c->ssl_ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!c->ssl_ctx) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "cannot create a TLS context: %s", why);
        goto fail;
    }
    SSL_CTX_set_app_data(c->ssl_ctx, c);
    SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
    /* No compression, no renegotiation; a peer closing without close_notify reads as EOF,
     * as on a plain socket (the frame layer above notices a torn frame). */
    SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                        SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read ahead: one read(2) brings what has arrived, where reading a record's 5-byte header
     * and then its body costs two system calls per 16 KiB. Not into a buffer of many records:
     * OpenSSL 3.0 moves what is left in its buffer to the front before each record, and with
     * 256 KiB that memmove took more CPU than the AES (perf, 1 MiB writes). */
    SSL_CTX_set_read_ahead(c->ssl_ctx, 1);
    SSL_CTX_set_default_read_buffer_len(c->ssl_ctx, READ_BUFFER);
    SSL_CTX_set_session_cache_mode(c->ssl_ctx, SSL_SESS_CACHE_OFF);
    /* AES-128-GCM first: every replicated byte is sealed once and opened once, and with AES-NI
     * it is the fastest AEAD here (openssl speed, 16 KiB blocks: AES-128-GCM 4.0 GB/s,
     * ChaCha20-Poly1305 3.6 GB/s, AES-256-GCM 2.8 GB/s); OpenSSL's default puts AES-256 first. */
    SSL_CTX_set_ciphersuites(c->ssl_ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    if (server)
        SSL_CTX_set_num_tickets(c->ssl_ctx, 0);
    if ((certfile && *certfile) != (keyfile && *keyfile)) {
        snprintf(err, errlen, "a certificate needs its key file and a key its certificate");
        goto fail;
    }
    if (certfile && *certfile) {
        if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, certfile) != 1) {
            ssl_reason(why, sizeof why);
            snprintf(err, errlen, "certificate file %s: %s", certfile, why);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, keyfile, SSL_FILETYPE_PEM) != 1) {
            if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
                snprintf(err, errlen, "key file %s does not match certificate %s", keyfile, certfile);
                goto fail;
            }
            ssl_reason(why, sizeof why);
            snprintf(err, errlen, "key file %s: %s", keyfile, why);
            goto fail;
        }
        if (SSL_CTX_check_private_key(c->ssl_ctx) != 1) {
            snprintf(err, errlen, "key file %s does not match certificate %s", keyfile, certfile);
            goto fail;
        }
    }
    if (cafile && *cafile && SSL_CTX_load_verify_locations(c->ssl_ctx, cafile, NULL) != 1) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "CA file %s: %s", cafile, why);
        goto fail;
    }
    if (verify_peer && !(cafile && *cafile)) {
        snprintf(err, errlen, "verifying the peer needs a CA file");
        goto fail;
    }
    if (psk_file && *psk_file) {
        if (load_psk_file(c, psk_file, err, errlen) < 0)
            goto fail;
        if (psk_identity && *psk_identity) {
            snprintf(c->psk_identity, sizeof c->psk_identity, "%s", psk_identity);
            if (!find_psk(c, psk_identity)) {
                snprintf(err, errlen, "psk file %s: no key for identity '%s'", psk_file, psk_identity);
                goto fail;
            }
        }
        if (server)
            SSL_CTX_set_psk_server_callback(c->ssl_ctx, psk_server_cb);
        else
            SSL_CTX_set_psk_client_callback(c->ssl_ctx, psk_client_cb);
    } else if (server && !(certfile && *certfile)) {
        snprintf(err, errlen, "a TLS server needs a certificate or a psk file");
        goto fail;
    }
    /* A PSK session has no certificate to ask for: verify only where one is offered. */
    if (verify_peer)
        SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    else
        SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_NONE, NULL);
    return c;
fail:
    rm_tls_ctx_free(c);
    return NULL;
}

void rm_tls_ctx_free(rm_tls_ctx *c)
{
    if (!c)
        return;
    SSL_CTX_free(c->ssl_ctx);
    if (c->psk)
        OPENSSL_cleanse(c->psk, c->npsk * sizeof *c->psk);
    free(c->psk);
    free(c);
}

/* ---- the handshake ---- */

/* Why a handshake failed, in words a log reader can act on. */
static void describe_failure(SSL *ssl, int sslerr, int sys_errno, char *err, size_t errlen)
{
    unsigned long e = ERR_peek_error();
    long verify = SSL_is_init_finished(ssl) ? X509_V_OK : SSL_get_verify_result(ssl);
    int reason = e ? ERR_GET_REASON(e) : 0;
    char why[256];

    if (verify != X509_V_OK) {
        snprintf(err, errlen, "certificate verify failed: %s", X509_verify_cert_error_string(verify));
        return;
    }
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        snprintf(err, errlen, "peer did not present a certificate");
        return;
    }
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        int alert = reason - SSL_AD_REASON_OFFSET;
        if (alert == SSL_AD_CERTIFICATE_REQUIRED)
            snprintf(err, errlen, "peer requires a certificate and we presented none");
        else
            snprintf(err, errlen, "peer refused the handshake: alert %s", SSL_alert_desc_string_long(alert));
        return;
    }
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
        reason == SSL_R_RECORD_LENGTH_MISMATCH || reason == SSL_R_UNKNOWN_PROTOCOL ||
        reason == SSL_R_HTTP_REQUEST) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "peer does not speak TLS: %s", why);
        return;
    }
    if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING || (sslerr == SSL_ERROR_SYSCALL && !e && !sys_errno) ||
        sslerr == SSL_ERROR_ZERO_RETURN) {
        snprintf(err, errlen, "peer closed the connection during the handshake");
        return;
    }
    if (sslerr == SSL_ERROR_SYSCALL && !e && (sys_errno == EPIPE || sys_errno == ECONNRESET)) {
        snprintf(err, errlen, "peer closed the connection during the handshake (%s)", strerror(sys_errno));
        return;
    }
    if (sslerr == SSL_ERROR_SYSCALL && !e) {
        snprintf(err, errlen, "handshake failed: %s", strerror(sys_errno));
        return;
    }
    ssl_reason(why, sizeof why);
    snprintf(err, errlen, "handshake failed: %s", why);
}

static int is_ip_address(const char *name)
{
    unsigned char buf[16];

    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

rm_tls *rm_tls_handshake(rm_tls_ctx *ctx, int fd, int timeout_ms, const char *expected_name, char *err,
                         size_t errlen)
{
    struct rm_tls *s = calloc(1, sizeof *s);
    uint64_t deadline = deadline_after(timeout_ms);
    char why[256];

    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->fd = fd;
    s->fd_flags = fcntl(fd, F_GETFL);
    if (s->fd_flags < 0 || fcntl(fd, F_SETFL, s->fd_flags | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "fd %d: %s", fd, strerror(errno));
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->wlock, NULL);
    ERR_clear_error();
    s->ssl = SSL_new(ctx->ssl_ctx);
    if (!s->ssl || SSL_set_fd(s->ssl, fd) != 1 || SSL_set_app_data(s->ssl, s) != 1) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "cannot create a TLS session: %s", why);
        goto fail;
    }
    if (expected_name && *expected_name) {
        X509_VERIFY_PARAM *param = SSL_get0_param(s->ssl);
        int ok = is_ip_address(expected_name) ? X509_VERIFY_PARAM_set1_ip_asc(param, expected_name)
                                              : X509_VERIFY_PARAM_set1_host(param, expected_name, 0);
        if (ok != 1) {
            snprintf(err, errlen, "cannot check the peer's name '%s'", expected_name);
            goto fail;
        }
        if (!ctx->server && !is_ip_address(expected_name))
            SSL_set_tlsext_host_name(s->ssl, expected_name);
    }
    if (ctx->server)
        SSL_set_accept_state(s->ssl);
    else
        SSL_set_connect_state(s->ssl);
    for (;;) {
        int rc, sslerr, sys_errno, w;

        ERR_clear_error();
        errno = 0;
        rc = SSL_do_handshake(s->ssl);
        if (rc == 1)
            break;
        sslerr = SSL_get_error(s->ssl, rc);
        sys_errno = errno;
        if (sslerr == SSL_ERROR_WANT_READ || sslerr == SSL_ERROR_WANT_WRITE) {
            w = wait_fd(fd, sslerr == SSL_ERROR_WANT_WRITE, deadline);
            if (w == -ETIMEDOUT) {
                snprintf(err, errlen, "handshake timed out after %d ms", timeout_ms);
                goto fail;
            }
            if (w < 0) {
                snprintf(err, errlen, "handshake failed: poll: %s", strerror(-w));
                goto fail;
            }
            continue;
        }
        if (sslerr == SSL_ERROR_SYSCALL && (sys_errno == EINTR || sys_errno == EAGAIN))
            continue;
        describe_failure(s->ssl, sslerr, sys_errno, err, errlen);
        goto fail;
    }
    return s;
fail:
    if (s->ssl)
        SSL_free(s->ssl);
    fcntl(fd, F_SETFL, s->fd_flags);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->wlock);
    free(s);
    ERR_clear_error();
    return NULL;
}

/* ---- record I/O (tls.h) ---- */

int tls_fd(struct rm_tls *s)
{
    return s->fd;
}

/* One SSL_read or SSL_write under the lock, waiting outside it as OpenSSL asks. */
static ssize_t tls_io(struct rm_tls *s, int writing, void *buf, size_t len, int nonblock, uint64_t deadline)
{
    for (;;) {
        int n, sslerr, sys_errno, w;
        unsigned long e;

        pthread_mutex_lock(&s->lock);
        ERR_clear_error();
        errno = 0;
        n = writing ? SSL_write(s->ssl, buf, (int)len) : SSL_read(s->ssl, buf, (int)len);
        sslerr = n > 0 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, n);
        sys_errno = errno;
        e = ERR_peek_error();
        if (sslerr == SSL_ERROR_SSL && !s->error[0])
            describe_failure(s->ssl, sslerr, sys_errno, s->error, sizeof s->error);
        ERR_clear_error();
        pthread_mutex_unlock(&s->lock);
        switch (sslerr) {
        case SSL_ERROR_NONE:
            return n;
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
            if (nonblock && !writing)
                return -EAGAIN;
            w = wait_fd(s->fd, sslerr == SSL_ERROR_WANT_WRITE, deadline);
            if (w < 0)
                return w;
            continue;
        case SSL_ERROR_ZERO_RETURN:     /* close_notify */
            return writing ? -EPIPE : 0;
        case SSL_ERROR_SYSCALL:
            if (sys_errno == EINTR)
                continue;
            if (sys_errno == EAGAIN) {
                if (nonblock && !writing)
                    return -EAGAIN;
                if ((w = wait_fd(s->fd, writing, deadline)) < 0)
                    return w;
                continue;
            }
            if (!sys_errno && !e)
                return writing ? -EPIPE : 0;      /* EOF (SSL_OP_IGNORE_UNEXPECTED_EOF) */
            return sys_errno ? -sys_errno : -EPROTO;
        default:   /* SSL_ERROR_SSL: a bad record or an alert (s->error): the session is unusable */
            return -EPROTO;
        }
    }
}

ssize_t tls_read(struct rm_tls *s, void *buf, size_t len, int nonblock, int timeout_ms)
{
    if (len > INT32_MAX)
        len = INT32_MAX;
    return tls_io(s, 0, buf, len, nonblock, deadline_after(timeout_ms));
}

/* wlock held: send what is staged */
static ssize_t flush_staged(struct rm_tls *s)
{
    ssize_t n = 0;

    if (s->staged)
        n = tls_io(s, 1, s->stage, s->staged, 0, 0);
    s->staged = 0;
    return n < 0 ? n : 0;
}

ssize_t tls_write(struct rm_tls *s, const void *buf, size_t len, int more)
{
    const unsigned char *p = buf;
    size_t left = len;
    ssize_t rc = 0;

    pthread_mutex_lock(&s->wlock);
    while (left > 0 && rc >= 0) {
        if (s->staged == 0 && (left >= RECORD_MAX || !more)) {
            /* whole records straight from the caller (the tail too, unless more follows) */
            size_t n = more ? left - left % RECORD_MAX : left;
            if (n > RECORD_MAX * 16)
                n = RECORD_MAX * 16;
            rc = tls_io(s, 1, (void *)p, n, 0, 0);
            if (rc > 0) {
                p += rc;
                left -= (size_t)rc;
            }
            continue;
        }
        size_t take = RECORD_MAX - s->staged < left ? RECORD_MAX - s->staged : left;
        memcpy(s->stage + s->staged, p, take);
        s->staged += take;
        p += take;
        left -= take;
        if (s->staged == RECORD_MAX || (left == 0 && !more))
            rc = flush_staged(s);
    }
    if (rc >= 0 && !more)
        rc = flush_staged(s);
    if (rc < 0)
        s->staged = 0;
    pthread_mutex_unlock(&s->wlock);
    return rc < 0 ? rc : (ssize_t)len;
}

unsigned char *tls_pipe_buffer(struct rm_tls *s, size_t size)
{
    if (s->pipebuf_size < size) {
        free(s->pipebuf);
        s->pipebuf = malloc(size);
        s->pipebuf_size = s->pipebuf ? size : 0;
    }
    return s->pipebuf;
}

int tls_pending(struct rm_tls *s)
{
    int n;

    pthread_mutex_lock(&s->lock);
    n = SSL_pending(s->ssl);
    if (n == 0 && SSL_has_pending(s->ssl))
        n = 1;      /* a record read ahead, not yet decrypted: its size is unknown, not zero */
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- the contract's whole reads and writes (Python's, before C takes the session) ---- */

int rm_tls_write_all(rm_tls *s, const void *buf, size_t len)
{
    ssize_t n = tls_write(s, buf, len, 0);

    return n < 0 ? (int)n : 0;
}

int rm_tls_read_exact(rm_tls *s, void *buf, size_t len, int timeout_ms)
{
    uint64_t deadline = deadline_after(timeout_ms);
    char *p = buf;

    while (len > 0) {
        ssize_t n = tls_io(s, 0, p, len > INT32_MAX ? INT32_MAX : len, 0, deadline);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0)
            return (int)n;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void rm_tls_describe(rm_tls *s, char *out, size_t outlen)
{
    X509 *peer;
    char subject[256] = "";

    pthread_mutex_lock(&s->lock);
    peer = SSL_get1_peer_certificate(s->ssl);
    if (peer) {
        X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof subject);
        X509_free(peer);
    }
    const char *psk_id = peer || !s->psk_identity[0] ? NULL : s->psk_identity;
    snprintf(out, outlen, "%s %s%s%s", SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl),
             peer ? " peer " : psk_id ? " psk " : "", peer ? subject : psk_id ? psk_id : "");
    pthread_mutex_unlock(&s->lock);
}

void rm_tls_error(rm_tls *s, char *out, size_t outlen)
{
    pthread_mutex_lock(&s->lock);
    snprintf(out, outlen, "%s", s->error);
    pthread_mutex_unlock(&s->lock);
}

/* Before the caller closes the fd: this writes close_notify to it and restores its flags. */
void rm_tls_close(rm_tls *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    ERR_clear_error();
    SSL_shutdown(s->ssl);    /* close_notify, best effort: non-blocking, no wait for the answer */
    SSL_free(s->ssl);
    ERR_clear_error();
    pthread_mutex_unlock(&s->lock);
    fcntl(s->fd, F_SETFL, s->fd_flags);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->wlock);
    free(s->pipebuf);
    free(s);
}

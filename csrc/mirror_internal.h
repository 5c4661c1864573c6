/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Private to csrc/: the engine's layout and helpers shared by the frontends. Not part of the
 * cffi contract (that is mirror.h). */
#ifndef RM_MIRROR_INTERNAL_H
#define RM_MIRROR_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct rm_engine {
    int fd;                 /* backing disk; owned by Python, never closed here */
    uint64_t size;          /* exported size in bytes (metadata, if internal, lies beyond) */
    int read_only;          /* atomic: writes answered with EPERM */
    int is_block_device;    /* use BLKDISCARD/BLKZEROOUT instead of fallocate */
    int can_punch;          /* atomic: cleared after the first EOPNOTSUPP */
    int can_zero_range;     /* atomic: likewise for FALLOC_FL_ZERO_RANGE */
    rm_stats stats;         /* relaxed atomics */

    pthread_mutex_t lock;   /* guards the client registry below */
    int *clients;
    size_t nclients, cap_clients;
    int shutting_down;
};

#define STAT_ADD(eng, field, n) __atomic_fetch_add(&(eng)->stats.field, (n), __ATOMIC_RELAXED)

int engine_check_range(rm_engine *eng, uint64_t offset, uint32_t count, int is_write);
int engine_add_client(rm_engine *eng, int fd);
void engine_remove_client(rm_engine *eng, int fd);

#endif

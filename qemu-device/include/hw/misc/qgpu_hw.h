/* SPDX-License-Identifier: GPL-2.0-or-later OR MIT */
/*
 * qgpu hardware interface: PCI identity, BAR layout, register map,
 * descriptor and scatter-gather formats, interrupt causes, error codes.
 *
 * This header is the single source of truth for the device ABI. It is
 * included by the QEMU device model (hw/misc/qgpu/), by the Linux driver
 * and guest tools (guest-driver/), and read by the Python tests
 * (orchestrator/src/qgpu/abi.py), which parse its "#define QGPU_*" integer
 * constants and its structs. Keep it to that: integer #defines built from
 * literals, other QGPU_* names, shifts, | + - *, and structs of qgpu_le32 /
 * qgpu_le64 fields.
 *
 * Everything the device reads or writes in memory is little-endian.
 * docs/qgpu-spec.md explains all of this for people.
 */
#ifndef QGPU_HW_H
#define QGPU_HW_H

#ifdef __KERNEL__
#include <linux/types.h>
typedef __le32 qgpu_le32;
typedef __le64 qgpu_le64;
#else
#include <stdint.h>
typedef uint32_t qgpu_le32;
typedef uint64_t qgpu_le64;
#endif

/* ---- PCI identity ------------------------------------------------------ */

#define QGPU_PCI_VENDOR_ID          0x1234  /* QEMU's test-device vendor */
#define QGPU_PCI_DEVICE_ID          0x5147  /* "QG" */
#define QGPU_PCI_REVISION           0x01
#define QGPU_PCI_CLASS              0x0302  /* display: 3D controller */

/* ---- BARs -------------------------------------------------------------- */

#define QGPU_BAR_REGS               0       /* 32-bit MMIO, QGPU_REGS_SIZE */
#define QGPU_BAR_VRAM               2       /* 64-bit prefetchable RAM */
#define QGPU_BAR_MSIX               4       /* MSI-X table and PBA */

#define QGPU_REGS_SIZE              0x2000
#define QGPU_PAGE_SIZE              0x1000
/*
 * BAR0 is two 4 KiB pages. Page 0 holds the privileged registers; only the
 * kernel driver maps it. Page 1 is the user page: what user space may map
 * to poll progress without a system call (read-only status) plus a scratch
 * register to check the mapping with. No user-page write can start DMA.
 */
#define QGPU_REGS_KERNEL_PAGE       0x0000
#define QGPU_REGS_USER_PAGE         0x1000

#define QGPU_VRAM_SIZE_DEFAULT      (64 << 20)
#define QGPU_VRAM_SIZE_MIN          (1 << 20)
#define QGPU_VRAM_SIZE_MAX          (16ULL << 30)

/* ---- Registers (offsets into BAR0; 32 bits wide) ------------------------ */
/*
 * Access rules: 4-byte accesses at 4-byte aligned offsets. An 8-byte access
 * at an 8-byte aligned offset is handled as two 4-byte accesses, low offset
 * first (use it for _LO/_HI pairs). Any other size or alignment, an unknown
 * offset, a read of a write-only register or a write to a read-only one is
 * ignored (reads return 0), logged as a guest error and recorded in
 * ACCESS_ERROR / ACCESS_ERROR_ADDR.
 */
#define QGPU_REG_ID                 0x000   /* RO: QGPU_ID_MAGIC */
#define QGPU_REG_VERSION            0x004   /* RO: major << 16 | minor */
#define QGPU_REG_CAPS               0x008   /* RO: QGPU_CAP_* */
#define QGPU_REG_SCRATCH            0x00c   /* RW: no effect; reset to 0 */
#define QGPU_REG_VRAM_SIZE_LO       0x010   /* RO: VRAM (BAR2) size, bytes */
#define QGPU_REG_VRAM_SIZE_HI       0x014   /* RO */
#define QGPU_REG_RING_MAX_ENTRIES   0x018   /* RO: QGPU_RING_MAX_ENTRIES */
#define QGPU_REG_SG_MAX_ENTRIES     0x01c   /* RO: SG list limit (spec 9.1) */

/* Ring registers are writable only while disabled and nothing is in flight. */
#define QGPU_REG_RING_BASE_LO       0x020   /* RW: ring bus address, 64-byte aligned */
#define QGPU_REG_RING_BASE_HI       0x024   /* RW */
#define QGPU_REG_RING_SIZE          0x028   /* RW: entries, 2^n; empties the ring */
#define QGPU_REG_RING_HEAD          0x02c   /* RO: next index the engine runs */
#define QGPU_REG_RING_TAIL          0x030   /* RO: last index written to DOORBELL */
#define QGPU_REG_DOORBELL           0x034   /* WO: new tail index; starts work.
                                             * Must not move TAIL back over
                                             * outstanding descriptors. */
#define QGPU_REG_ENGINE_CTRL        0x038   /* RW: QGPU_ENGINE_CTRL_* */
#define QGPU_REG_ENGINE_STATUS      0x03c   /* RO: QGPU_ENGINE_STATUS_* */
#define QGPU_REG_ENGINE_RESET       0x040   /* WO: write QGPU_ENGINE_RESET_MAGIC:
                                             * aborts the descriptor in flight,
                                             * empties the ring, disables the
                                             * engine; keeps ring config and
                                             * DMA_ERROR */

#define QGPU_REG_INT_STATUS         0x048   /* RW1C: QGPU_INT_* pending causes */
#define QGPU_REG_INT_MASK           0x04c   /* RW: QGPU_INT_* enabled causes */
#define QGPU_REG_INT_RAISE          0x050   /* WO: sets QGPU_INT_* in INT_STATUS */

#define QGPU_REG_FENCE_LO           0x058   /* RO: last fence value written */
#define QGPU_REG_FENCE_HI           0x05c   /* RO */

#define QGPU_REG_DMA_ERROR          0x060   /* RW: last QGPU_ERR_* (write: clear) */
#define QGPU_REG_DMA_ERROR_INDEX    0x064   /* RO: ring index of that descriptor */
#define QGPU_REG_ACCESS_ERROR       0x068   /* RW1C: QGPU_ACCESS_ERR_* */
#define QGPU_REG_ACCESS_ERROR_ADDR  0x06c   /* RO: BAR0 offset of last misuse */

/* User page (BAR0 + QGPU_REGS_USER_PAGE). */
#define QGPU_REG_USER_ID            0x1000  /* RO: QGPU_ID_MAGIC */
#define QGPU_REG_USER_ENGINE_STATUS 0x1004  /* RO: mirror of ENGINE_STATUS */
#define QGPU_REG_USER_FENCE_LO      0x1008  /* RO: mirror of FENCE_LO */
#define QGPU_REG_USER_FENCE_HI      0x100c  /* RO: mirror of FENCE_HI */
#define QGPU_REG_USER_RING_HEAD     0x1010  /* RO: mirror of RING_HEAD */
#define QGPU_REG_USER_SCRATCH       0x1014  /* RW: no effect; reset to 0 */

/* ---- Register values ----------------------------------------------------- */

#define QGPU_ID_MAGIC               0x55504751  /* "QGPU" in memory order */
#define QGPU_VERSION_MAJOR          1
#define QGPU_VERSION_MINOR          0
#define QGPU_VERSION                ((QGPU_VERSION_MAJOR << 16) | QGPU_VERSION_MINOR)

#define QGPU_CAP_DMA_COPY           (1 << 0)  /* COPY_TO/FROM_VRAM, COPY_VRAM */
#define QGPU_CAP_DMA_FILL           (1 << 1)
#define QGPU_CAP_SG                 (1 << 2)  /* QGPU_DESC_F_SG */
#define QGPU_CAP_FENCE              (1 << 3)  /* QGPU_DESC_F_FENCE */
#define QGPU_CAP_MSIX               (1 << 4)  /* MSI-X capability present */
#define QGPU_CAP_MSI                (1 << 5)  /* MSI capability present */
#define QGPU_CAP_VRAM_SHARED        (1 << 6)  /* VRAM on a host memory backend */
#define QGPU_CAP_USER_PAGE          (1 << 7)

#define QGPU_RING_MAX_ENTRIES       4096
#define QGPU_RING_MIN_ENTRIES       2
#define QGPU_SG_MAX_ENTRIES         4096

#define QGPU_ENGINE_CTRL_ENABLE     (1 << 0)  /* run descriptors HEAD..TAIL */

#define QGPU_ENGINE_STATUS_BUSY     (1 << 0)  /* work pending or in flight */
#define QGPU_ENGINE_STATUS_HALTED   (1 << 1)  /* ring fault; needs ENGINE_RESET */
#define QGPU_ENGINE_STATUS_ENABLED  (1 << 2)  /* mirror of ENGINE_CTRL_ENABLE */

#define QGPU_ENGINE_RESET_MAGIC     0x1

/* Interrupt causes (INT_STATUS, INT_MASK, INT_RAISE). */
#define QGPU_INT_DMA_DONE           (1 << 0)  /* a QGPU_DESC_F_IRQ desc retired */
#define QGPU_INT_DMA_ERROR          (1 << 1)  /* a descriptor failed */
#define QGPU_INT_ENGINE_HALT        (1 << 2)  /* ring fault; engine halted */
#define QGPU_INT_SOFT               (1 << 3)  /* INT_RAISE by software */
#define QGPU_INT_ALL                0xf

/* MSI-X vectors and the causes each one signals. */
#define QGPU_MSIX_VEC_DMA           0   /* QGPU_INT_DMA_DONE */
#define QGPU_MSIX_VEC_ERROR         1   /* QGPU_INT_DMA_ERROR, QGPU_INT_ENGINE_HALT */
#define QGPU_MSIX_VEC_MISC          2   /* QGPU_INT_SOFT */
#define QGPU_MSIX_VECTORS           3

/* ACCESS_ERROR bits: register misuse by the driver. */
#define QGPU_ACCESS_ERR_SIZE        (1 << 0)  /* bad access size or alignment */
#define QGPU_ACCESS_ERR_OFFSET      (1 << 1)  /* no register there / write-only */
#define QGPU_ACCESS_ERR_READ_ONLY   (1 << 2)  /* write to a read-only register */
#define QGPU_ACCESS_ERR_VALUE       (1 << 3)  /* value refused (see spec) */
#define QGPU_ACCESS_ERR_BUSY        (1 << 4)  /* ring config written while enabled
                                               * or a descriptor is in flight */
#define QGPU_ACCESS_ERR_ALL         0x1f

/* ---- Descriptor ring ---------------------------------------------------- */

/* Opcodes. "guest" means bus addresses (IOVAs behind an IOMMU). */
#define QGPU_OP_NOP                 0   /* no data; fence and interrupt only */
#define QGPU_OP_COPY_TO_VRAM        1   /* guest src (or SG) -> VRAM dst offset */
#define QGPU_OP_COPY_FROM_VRAM      2   /* VRAM src offset -> guest dst (or SG) */
#define QGPU_OP_COPY_VRAM           3   /* VRAM -> VRAM, memmove semantics */
#define QGPU_OP_FILL                4   /* VRAM dst <- fill_pattern repeated */
#define QGPU_OP_MAX                 4

#define QGPU_DESC_F_IRQ             (1 << 0)  /* raise DMA_DONE on retire */
#define QGPU_DESC_F_FENCE           (1 << 1)  /* write fence_value at fence_addr */
#define QGPU_DESC_F_SG              (1 << 2)  /* guest side is an SG list */
#define QGPU_DESC_F_ALL             0x7

/* status word, written back by the device when a descriptor retires. */
#define QGPU_DESC_STATUS_DONE       (1u << 31)
#define QGPU_DESC_STATUS_ERR_MASK   0xff

#define QGPU_DESC_SIZE              64
#define QGPU_DESC_OFF_STATUS        56

/**
 * struct qgpu_desc - one DMA command in the ring (64 bytes, little-endian)
 * @opcode:      QGPU_OP_*
 * @flags:       QGPU_DESC_F_*; other bits must be zero
 * @src:         source: guest bus address, SG list address (F_SG, COPY_TO_VRAM)
 *               or VRAM offset (COPY_FROM_VRAM, COPY_VRAM)
 * @dst:         destination: VRAM offset, or guest bus address / SG list
 *               address (COPY_FROM_VRAM)
 * @length:      bytes to transfer; non-zero for every opcode but NOP
 * @fence_addr:  with F_FENCE: guest bus address of a 64-bit fence slot
 *               (written when the descriptor retires, with or without an
 *               error); must be zero without F_FENCE
 * @fence_value: with F_FENCE: the value written there; else must be zero
 * @fill_pattern: FILL: 32-bit pattern, repeated little-endian from dst
 * @sg_count:    with F_SG: entries in the SG list; otherwise must be zero
 * @status:      written by the device on retire: QGPU_DESC_STATUS_DONE |
 *               QGPU_ERR_*; the driver clears it before submitting (the
 *               device ignores its value on input)
 * @reserved:    must be zero
 */
struct qgpu_desc {
    qgpu_le32 opcode;
    qgpu_le32 flags;
    qgpu_le64 src;
    qgpu_le64 dst;
    qgpu_le64 length;
    qgpu_le64 fence_addr;
    qgpu_le64 fence_value;
    qgpu_le32 fill_pattern;
    qgpu_le32 sg_count;
    qgpu_le32 status;
    qgpu_le32 reserved;
};

#define QGPU_SG_ENTRY_SIZE          16
#define QGPU_SG_SEG_MAX_LEN         0xffffffff

/**
 * struct qgpu_sg_entry - one segment of a scatter-gather list (16 bytes)
 * @addr:     guest bus address of the segment
 * @len:      segment length in bytes, non-zero
 * @reserved: must be zero
 *
 * An SG list is a flat array of @sg_count entries (no chaining); the segment
 * lengths must add up to the descriptor's length exactly.
 */
struct qgpu_sg_entry {
    qgpu_le64 addr;
    qgpu_le32 len;
    qgpu_le32 reserved;
};

/* ---- Error codes (descriptor status, DMA_ERROR register) ---------------- */

#define QGPU_ERR_NONE               0
#define QGPU_ERR_BAD_OPCODE         1   /* opcode > QGPU_OP_MAX */
#define QGPU_ERR_BAD_FLAGS          2   /* unknown flag, or F_SG where not allowed */
#define QGPU_ERR_RESERVED           3   /* a reserved/unused field is non-zero */
#define QGPU_ERR_LENGTH             4   /* zero length */
#define QGPU_ERR_VRAM_RANGE         5   /* VRAM offset + length beyond VRAM */
#define QGPU_ERR_ADDR_OVERFLOW      6   /* guest address + length wraps 2^64 */
#define QGPU_ERR_SELF_DMA           7   /* guest range hits one of our BARs */
#define QGPU_ERR_DMA_READ           8   /* reading guest memory failed */
#define QGPU_ERR_DMA_WRITE          9   /* writing guest memory (or status) failed */
#define QGPU_ERR_SG_COUNT           10  /* sg_count zero or > SG_MAX_ENTRIES */
#define QGPU_ERR_SG_ENTRY           11  /* SG entry: zero len or reserved set */
#define QGPU_ERR_SG_LENGTH          12  /* SG lengths do not add up to length */
#define QGPU_ERR_FENCE_WRITE        13  /* fence write-back failed */
#define QGPU_ERR_ABORTED            14  /* engine reset while in flight */
#define QGPU_ERR_DESC_FETCH         15  /* ring entry unreadable: engine halts
                                         * (SELF_DMA if the ring hits a BAR) */
#define QGPU_ERR_MAX                15
/* Injected faults (x-fault-* properties) report the codes real faults would. */

#endif /* QGPU_HW_H */

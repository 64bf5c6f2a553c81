/* virtio_probe (PVH): reads the identity registers of the virtio-mmio device the VMM puts at
 * 0xd0001000 (virtio 1.2, 4.2.2: MagicValue, Version, DeviceID) and the low 32 bits of a block
 * device's capacity from its config space (offset 0x100), prints
 * "VIRTIO <magic> <version> <device id> <capacity low>\n" in hex, and resets. Without a device the
 * reads return all ones. */
#include "guest.inc"

#define VIRTIO_MMIO_BASE 0xd0001000

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    mov $prefix, %esi
    call puts
    mov $8, %ecx
    mov VIRTIO_MMIO_BASE + 0x000, %eax      /* MagicValue */
    call put_hex
    call put_space
    mov VIRTIO_MMIO_BASE + 0x004, %eax      /* Version */
    call put_hex_short
    call put_space
    mov VIRTIO_MMIO_BASE + 0x008, %eax      /* DeviceID */
    call put_hex_short
    call put_space
    mov VIRTIO_MMIO_BASE + 0x100, %eax      /* config: capacity (sectors), low half */
    call put_hex_short
    mov $newline, %esi
    call puts
    I8042_RESET

put_space:
    mov $' ', %al
    call putc
    ret

    .section .rodata
prefix:
    .asciz "VIRTIO "

#include "lib32.inc"
#include "stack.inc"
PVH_NOTE _start

/* hello (PVH): print "RDY\n" on COM1 and reset through the i8042.
 *
 * The boot-time benchmark guest, so it runs as few instructions as possible
 * (11): no stack, no LSR polling. Four bytes after reset fit an empty 16550
 * FIFO, and VMM 8250 models (vm-superio, QEMU) transmit synchronously.
 * One `out` per byte rather than `rep outsb`: some VMMs (Firecracker) accept
 * only single-byte writes to the serial port. */
#include "guest.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $COM1, %dx
    mov $'R', %al
    out %al, %dx
    mov $'D', %al
    out %al, %dx
    mov $'Y', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    I8042_RESET

PVH_NOTE _start

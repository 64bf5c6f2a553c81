/* marker (PVH): write the boot marker (byte 123 to MMIO 0xd0000000, Firecracker's
 * convention), print "RDY\n" and reset. */
#include "guest.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    WRITE_BOOT_MARKER
    mov $stack_top, %esp
    mov $ready_message, %esi
    call puts
    I8042_RESET

    .section .rodata
ready_message:
    .asciz "RDY\n"

#include "lib32.inc"
#include "stack.inc"
PVH_NOTE _start

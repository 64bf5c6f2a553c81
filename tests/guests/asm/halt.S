/* halt (PVH): write the boot marker, print "HALT\n", then halt forever with
 * interrupts off. For stop / SIGTERM / pause tests: the VM never ends itself. */
#include "guest.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    WRITE_BOOT_MARKER
    mov $halt_message, %esi
    call puts
.Lhalt:
    cli
    hlt
    jmp .Lhalt

    .section .rodata
halt_message:
    .asciz "HALT\n"

#include "lib32.inc"
#include "stack.inc"
PVH_NOTE _start

/* cmdline (PVH): print the kernel command line found through hvm_start_info
 * as "CMDLINE:<text>\n" and reset. Prints "BAD START INFO\n" if EBX does not
 * point at an hvm_start_info. Only the low 4 GiB is reachable (paging off). */
#include "guest.inc"
#include "start_info.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    CHECK_START_INFO bad_start_info
    mov $cmdline_prefix, %esi
    call puts
    cmpl $0, START_INFO_CMDLINE_PADDR + 4(%ebx)
    jne .Lcmdline_done                 /* above 4 GiB: not addressable, print nothing */
    mov START_INFO_CMDLINE_PADDR(%ebx), %esi
    test %esi, %esi
    jz .Lcmdline_done                  /* no command line */
    call puts
.Lcmdline_done:
    mov $newline, %esi
    call puts
    I8042_RESET

bad_start_info:
    mov $bad_start_info_message, %esi
    call puts
    I8042_RESET

    .section .rodata
cmdline_prefix:
    .asciz "CMDLINE:"
bad_start_info_message:
    .asciz "BAD START INFO\n"

#include "lib32.inc"
#include "stack.inc"
PVH_NOTE _start

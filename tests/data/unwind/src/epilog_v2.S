# Version 2 unwind info, written by hand (clang 14 does not emit it, and llvm-readobj 14 cannot read
# it: it stops on UWOP_EPILOG). Its format (LLVM's description when it added the "Win x64 unwind
# v2" dump, llvm-project pull request 110338): unwind code 6 is UWOP_EPILOG; the first one gives in
# CodeOffset the size of every epilogue and in bit 0 of OpInfo whether one ends the function; each
# further one gives in OpInfo:CodeOffset (12 bits) an epilogue's distance back from the function's
# end, 0 being padding. An epilogue starts at its first pop (the deallocation is before it).
#
# v2_entry calls v2_func twice: with 0 it leaves through the early epilogue, otherwise it calls
# v2_leaf and leaves through the last one.
    .text

    .globl v2_leaf
    .def v2_leaf; .scl 2; .type 32; .endef
v2_leaf:
    lea 9(%rcx), %rax
    ret

    .globl v2_entry
    .def v2_entry; .scl 2; .type 32; .endef
    .seh_proc v2_entry
v2_entry:
    push %rdi
    .seh_pushreg %rdi
    sub $0x20, %rsp
    .seh_stackalloc 0x20
    .seh_endprologue
    mov %rcx, %rdi
    xor %ecx, %ecx
    call v2_func
    lea 3(%rdi), %rcx
    call v2_func
    add $0x20, %rsp
    pop %rdi
    ret
    .seh_endproc

    .globl v2_func
    .def v2_func; .scl 2; .type 32; .endef
v2_func:
    push %rbx
    push %rsi
    sub $0x28, %rsp
v2_prolog_end:
    mov %rcx, %rbx
    lea 1(%rcx), %rsi
    test %rcx, %rcx
    jnz 1f
    add $0x28, %rsp
    .globl v2_early_epilog
v2_early_epilog:
    pop %rsi
    pop %rbx
    ret
1:
    call v2_leaf
    mov %rsi, %rax
    add $0x28, %rsp
    .globl v2_last_epilog
v2_last_epilog:
    pop %rsi
    pop %rbx
    ret
    .globl v2_func_end
v2_func_end:

    .section .xdata,"dr"
    .p2align 2
v2_unwind_info:
    .byte 0x02                                  # version 2, no flags
    .byte v2_prolog_end - v2_func               # SizeOfProlog
    .byte 6                                     # CountOfCodes
    .byte 0                                     # no frame register
    .byte v2_func_end - v2_last_epilog, 0x16    # UWOP_EPILOG header: epilogue size; OpInfo 1: one ends the function
    .byte (v2_func_end - v2_early_epilog) & 0xFF, 0x06 | (((v2_func_end - v2_early_epilog) >> 8) << 4)
    .byte 0, 0x06                               # UWOP_EPILOG padding (distance 0)
    .byte v2_prolog_end - v2_func, 0x42         # UWOP_ALLOC_SMALL 0x28 (OpInfo 4) after sub rsp
    .byte 2, 0x60                               # UWOP_PUSH_NONVOL rsi (6) after push rsi
    .byte 1, 0x30                               # UWOP_PUSH_NONVOL rbx (3) after push rbx
    .section .pdata,"dr"
    .p2align 2
    .long v2_func@IMGREL, v2_func_end@IMGREL, v2_unwind_info@IMGREL

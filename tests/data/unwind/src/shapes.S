# Hand-written functions for the unwind codes and shapes that clang does not emit on its own:
# UWOP_SAVE_NONVOL(_FAR), UWOP_SAVE_XMM128(_FAR), a frame register with an offset, chained unwind
# info, UWOP_PUSH_MACHFRAME with and without an error code, an in-function jmp right after a 0x58
# byte, a tail jmp through memory, and a call as the last instruction of a function.
#
# asm_chain: home_save -> fp_saves -> far_saves -> chained_func -> loop_with_jump -> tail_indirect => deepest,
# then calls_at_end -> finish (the test stops the emulator at finish).
# trap_entry -> trap_victim, interrupted by the test (which pushes the machine frame as the CPU
# does) into trap_handler or trap_handler_code -> deepest; the test stops at trap_done.

    .text

    .globl __chkstk
    .def __chkstk; .scl 2; .type 32; .endef
__chkstk:                               # a leaf: no RUNTIME_FUNCTION; RAX is kept
    ret

    .globl deepest
    .def deepest; .scl 2; .type 32; .endef
deepest:                                # a leaf: the return address is at [rsp]
    mov %rcx, %rax
    .globl deepest_point
deepest_point:
    inc %rax
    ret

    .globl asm_chain
    .def asm_chain; .scl 2; .type 32; .endef
    .seh_proc asm_chain
asm_chain:
    push %rbx
    .seh_pushreg %rbx
    sub $0x20, %rsp
    .seh_stackalloc 0x20
    .seh_endprologue
    mov %rcx, %rbx
    call home_save
    mov %rbx, %rcx
    call calls_at_end
    int3
    .seh_endproc

# A save before the allocation, as MSVC saves to the caller's home area: the offset of
# UWOP_SAVE_NONVOL counts from the bottom of the fixed allocation, which is not yet made when the
# save runs.
    .def home_save; .scl 3; .type 32; .endef
    .seh_proc home_save
home_save:
    mov %rbx, 0x10(%rsp)
    .seh_savereg %rbx, 0x40
    push %rdi
    .seh_pushreg %rdi
    sub $0x28, %rsp
    .seh_stackalloc 0x28
    .seh_endprologue
    mov %rcx, %rbx
    lea 5(%rcx), %rdi
    call fp_saves
    mov %rdi, %rax
    mov 0x40(%rsp), %rbx
    add $0x28, %rsp
    pop %rdi
    ret
    .seh_endproc

# A frame register with an offset (RBP = RSP + 0x40), saves relative to the frame base, then a
# dynamic allocation below it; the epilogue restores RSP with lea from RBP.
    .def fp_saves; .scl 3; .type 32; .endef
    .seh_proc fp_saves
fp_saves:
    push %rbp
    .seh_pushreg %rbp
    sub $0x80, %rsp
    .seh_stackalloc 0x80
    lea 0x40(%rsp), %rbp
    .seh_setframe %rbp, 0x40
    mov %rsi, 0x18(%rbp)
    .seh_savereg %rsi, 0x58
    movaps %xmm7, (%rbp)
    .seh_savexmm %xmm7, 0x40
    .seh_endprologue
    sub $0x40, %rsp
    mov %rcx, %rsi
    movq %rcx, %xmm7
    call far_saves
    mov %rsi, %rax
    movaps (%rbp), %xmm7
    mov 0x18(%rbp), %rsi
    lea 0x40(%rbp), %rsp
    pop %rbp
    ret
    .seh_endproc

# Saves at offsets past the short forms' reach: UWOP_SAVE_NONVOL_FAR (offset >= 512 KiB) and
# UWOP_SAVE_XMM128_FAR (offset >= 1 MiB), beside their short forms.
    .def far_saves; .scl 3; .type 32; .endef
    .seh_proc far_saves
far_saves:
    sub $0x110008, %rsp
    .seh_stackalloc 0x110008
    mov %rsi, 0x88000(%rsp)
    .seh_savereg %rsi, 0x88000
    mov %rdi, 0x40(%rsp)
    .seh_savereg %rdi, 0x40
    movaps %xmm6, 0x100010(%rsp)
    .seh_savexmm %xmm6, 0x100010
    movaps %xmm8, 0x50(%rsp)
    .seh_savexmm %xmm8, 0x50
    .seh_endprologue
    mov %rcx, %rsi
    lea 0x1111(%rcx), %rdi
    movq %rcx, %xmm6
    movq %rdi, %xmm8
    call chained_func
    movaps 0x50(%rsp), %xmm8
    movaps 0x100010(%rsp), %xmm6
    mov 0x40(%rsp), %rdi
    mov 0x88000(%rsp), %rsi
    add $0x110008, %rsp
    ret
    .seh_endproc

# Chained unwind info: the rest of the function saves RSI under unwind info of its own whose parent
# is the function's primary unwind info (LLVM gives the parent entry the whole function's range, so
# the chained part runs to the end: the entries stay sorted and each address finds its own).
    .def chained_func; .scl 3; .type 32; .endef
    .seh_proc chained_func
chained_func:
    push %rbx
    .seh_pushreg %rbx
    sub $0x30, %rsp
    .seh_stackalloc 0x30
    .seh_endprologue
    mov %rcx, %rbx
    .seh_startchained
    mov %rsi, 0x28(%rsp)
    .seh_savereg %rsi, 0x28
    .seh_endprologue
    mov %rbx, %rsi
    xor $0x1234, %rsi
    mov %rsi, %rcx
    call loop_with_jump
    mov 0x28(%rsp), %rsi
    add $0x30, %rsp
    pop %rbx
    ret
    .seh_endchained
    .seh_endproc

# Body code that an epilogue scanner can mistake for an epilogue: an in-function jmp right after an
# instruction ending in 0x58 (the byte of pop rax).
    .def loop_with_jump; .scl 3; .type 32; .endef
    .seh_proc loop_with_jump
loop_with_jump:
    push %rbx
    .seh_pushreg %rbx
    push %r12
    .seh_pushreg %r12
    sub $0x28, %rsp
    .seh_stackalloc 0x28
    .seh_endprologue
    mov %rcx, %rbx
    mov $3, %r12d
    lea -0x30(%rsp), %rdx
1:
    dec %r12
    jz 2f
    mov 0x58(%rdx), %rax
    jmp 1b
2:
    mov %rbx, %rcx
    call tail_indirect
    add $0x28, %rsp
    pop %r12
    pop %rbx
    ret
    .seh_endproc

# An epilogue that ends in a jmp through memory (ModRM mod 00): a tail call to deepest.
    .def tail_indirect; .scl 3; .type 32; .endef
    .seh_proc tail_indirect
tail_indirect:
    push %rsi
    .seh_pushreg %rsi
    push %r13
    .seh_pushreg %r13
    sub $0x28, %rsp
    .seh_stackalloc 0x28
    .seh_endprologue
    mov %rcx, %rsi
    lea 7(%rcx), %r13
    mov %r13, %rcx
    add $0x28, %rsp
    pop %r13
    pop %rsi
    jmp *tail_target(%rip)
    .seh_endproc

# The call is the last instruction: its return address is the first byte of after_call_at_end.
    .def calls_at_end; .scl 3; .type 32; .endef
    .seh_proc calls_at_end
calls_at_end:
    push %rdi
    .seh_pushreg %rdi
    sub $0x20, %rsp
    .seh_stackalloc 0x20
    .seh_endprologue
    mov %rcx, %rdi
    call finish
    .seh_endproc

    .def after_call_at_end; .scl 3; .type 32; .endef
    .seh_proc after_call_at_end
after_call_at_end:
    push %r14
    .seh_pushreg %r14
    push %r15
    .seh_pushreg %r15
    sub $0x108, %rsp
    .seh_stackalloc 0x108
    .seh_endprologue
    add $0x108, %rsp
    pop %r15
    pop %r14
    ret
    .seh_endproc

    .globl finish
    .def finish; .scl 2; .type 32; .endef
finish:                                 # a leaf; the test stops the emulator here
    nop
    ret

    .globl trap_entry
    .def trap_entry; .scl 2; .type 32; .endef
    .seh_proc trap_entry
trap_entry:
    push %rsi
    .seh_pushreg %rsi
    sub $0x20, %rsp
    .seh_stackalloc 0x20
    .seh_endprologue
    mov %rcx, %rsi
    call trap_victim
    add $0x20, %rsp
    pop %rsi
    ret
    .seh_endproc

    .def trap_victim; .scl 3; .type 32; .endef
    .seh_proc trap_victim
trap_victim:
    push %rbx
    .seh_pushreg %rbx
    .globl trap_in_prologue
trap_in_prologue:
    push %rdi
    .seh_pushreg %rdi
    sub $0x38, %rsp
    .seh_stackalloc 0x38
    .seh_endprologue
    mov %rcx, %rbx
    lea 3(%rcx), %rdi
    .globl trap_in_body
trap_in_body:
    nop
    nop
    add $0x38, %rsp
    pop %rdi
    pop %rbx
    ret
    .seh_endproc

# Interrupt handlers: a dummy prologue that records the machine frame the CPU pushed.
    .globl trap_handler
    .def trap_handler; .scl 2; .type 32; .endef
    .seh_proc trap_handler
trap_handler:
    .seh_pushframe
    push %rbp
    .seh_pushreg %rbp
    sub $0x20, %rsp
    .seh_stackalloc 0x20
    .seh_endprologue
    mov $0x77, %ecx
    call deepest
    .globl trap_done
trap_done:
    add $0x20, %rsp
    pop %rbp
    iretq
    .seh_endproc

    .globl trap_handler_code
    .def trap_handler_code; .scl 2; .type 32; .endef
    .seh_proc trap_handler_code
trap_handler_code:
    .seh_pushframe @code
    push %rbp
    .seh_pushreg %rbp
    sub $0x28, %rsp
    .seh_stackalloc 0x28
    .seh_endprologue
    mov $0x78, %ecx
    call deepest
    .globl trap_code_done
trap_code_done:
    add $0x28, %rsp
    pop %rbp
    add $8, %rsp
    iretq
    .seh_endproc

    .data
    .p2align 3
tail_target:
    .quad deepest

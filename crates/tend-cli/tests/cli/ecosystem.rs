//! What tend offers the rest of the system: shell completions that
//! complete, a man page, `--help` with examples, exit codes and the
//! environment, and `-c FILE` on either side of the command.

use std::process::Command;

use crate::harness::*;

#[test]
fn completion_scripts_for_each_shell() {
    let sandbox = Sandbox::new();
    for (shell, marker) in [
        ("bash", "complete -F _tend"),
        ("zsh", "#compdef tend"),
        ("fish", "complete -c tend"),
    ] {
        let run = sandbox.run(&["completions", shell]);
        run.expect_success();
        assert!(run.stdout.contains(marker), "{shell}:\n{}", run.stdout);
        assert!(run.stdout.contains("status"), "{shell} knows no commands");
    }
    sandbox.run(&["completions", "tcsh"]).expect_code(2);
}

#[test]
fn bash_completes_commands_and_options() {
    let sandbox = Sandbox::new();
    let script = sandbox.run(&["completions", "bash"]);
    script.expect_success();
    let path = sandbox.path().join("tend.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
                 _tend tend \"${{COMP_WORDS[-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = complete("tend st");
    for command in ["status", "start", "stop"] {
        assert!(
            commands.lines().any(|l| l == command),
            "{command}: {commands}"
        );
    }
    let options = complete("tend status --");
    for option in ["--json", "--watch", "--config", "--socket"] {
        assert!(options.lines().any(|l| l == option), "{option}: {options}");
    }
}

#[test]
fn the_man_page_is_roff_with_the_long_help() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["man"]);
    run.expect_success();
    for part in [
        ".TH tend 1",
        "NOTIFY_SOCKET",
        "Exit codes",
        "completions",
        "top",
    ] {
        assert!(run.stdout.contains(part), "{part} missing:\n{}", run.stdout);
    }
}

#[test]
fn help_has_examples_exit_codes_and_environment() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--help"]);
    run.expect_success();
    for part in [
        "Examples:",
        "tend top",
        "Exit codes:",
        "2  usage or config error",
        "Environment:",
        "TEND_CONTAINMENT",
        "TEND_GUARD",
        "TEND_LOG",
        "NOTIFY_SOCKET",
        "NO_COLOR",
    ] {
        assert!(run.stdout.contains(part), "{part} missing:\n{}", run.stdout);
    }
    let short = sandbox.run(&["-h"]);
    short.expect_success();
    assert!(short.stdout.contains("tend --help"), "{}", short.stdout);
}

#[test]
fn config_before_or_after_the_command() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.one]\ncommand = \"{}\"\nsocket = \"one.sock\"\n",
        testd().display()
    ));
    // Not ./tend.toml: without -c the commands would not find it.
    let moved = sandbox.path().join("other.toml");
    std::fs::rename(&config, &moved).unwrap();
    let c = moved.to_str().unwrap();
    sandbox.run(&["check", "-c", c]).expect_success();
    sandbox.run(&["-c", c, "check"]).expect_success();
    sandbox.run(&["check"]).expect_code(2);

    let mut up = sandbox.up(&moved);
    wait_for_states(&sandbox, &moved, &[("one", "running")]);
    let before = sandbox.run(&["-c", c, "status"]);
    before.expect_success();
    assert!(before.stdout.contains("one"), "{}", before.stdout);
    let after = sandbox.run(&["status", "--config", c]);
    after.expect_success();
    assert_eq!(before.stdout.lines().next(), after.stdout.lines().next());

    let both = sandbox.run(&["-c", c, "status", "--socket", "/nonexistent/tend.sock"]);
    both.expect_code(2);
    assert!(both.stderr.contains("pass one of them"), "{}", both.stderr);

    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success());
}

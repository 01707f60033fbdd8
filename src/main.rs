//! kvpr: LLM decoding with the KV cache in host memory.
//!
//! The binary is thin: it parses flags, resolves them into validated inputs in
//! one place per command, calls the library crates (`plans`, `scheduler`,
//! `profiler`, `runtime`), and prints. Errors are printed once with their whole
//! context chain and exit with code 2.

mod cmd;
mod fmt;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kvpr",
    version,
    about = "LLM decoding with the KV cache in host memory: recompute part of the context while the rest crosses the link",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure this machine (link, GEMM, attention, launch) and write a hardware profile.
    Calibrate(cmd::calibrate::CalibrateArgs),
    /// Solve for the recompute/transfer split and write a plan file.
    Plan(cmd::plan::PlanArgs),
    /// Simulate one decode step of a plan on a hardware profile and draw both streams.
    Simulate(cmd::simulate::SimulateArgs),
    /// Generate text with the KV cache in host memory, following a plan.
    Run(cmd::run::RunArgs),
    /// Measure decode steps per schedule and context beside their predictions, the I/O floor and `transfer`.
    Bench(cmd::bench::BenchArgs),
    /// Serve many requests when their K/V overflow the device, under each policy (recompute, swap, partial, offload).
    Overflow(cmd::overflow::OverflowArgs),
    /// Check every backend op and whole synthetic models against the CPU twins (exit 1 on a mismatch).
    Selftest(cmd::selftest::SelftestArgs),
    /// Serve an OpenAI-compatible API (/v1/completions) on one engine, with the K/V beyond the device in host memory.
    Serve(cmd::serve::ServeArgs),
}

/// The CLI, with every flag that takes a value taking a negative number as
/// one: `--steps -1` reaches the flag's parser, whose error names the flag,
/// instead of clap's "unexpected argument '-1'".
fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sc| {
        sc.mut_args(|a| {
            if a.get_action().takes_values() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        })
    })
}

fn main() -> ExitCode {
    // Errors are printed as messages: keep libraries (candle) from capturing a
    // backtrace into them when RUST_BACKTRACE is set. Panics still get theirs.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match &cli.command {
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Overflow(args) => cmd::overflow::run(args),
        Command::Serve(args) => cmd::serve::run(args.clone()),
        Command::Selftest(args) => match cmd::selftest::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `kvpr SUBCOMMAND ...` in README.md and docs/: the subcommand and
    /// the flags it names, lines ending in `\` joined, up to what ends a
    /// command in prose or a shell line.
    fn doc_commands() -> Vec<(String, String, Vec<String>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md")];
        for e in std::fs::read_dir(root.join("docs")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
        let subs: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap().replace("\\\n", " ");
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            for line in text.lines() {
                let mut rest = line;
                while let Some(i) = rest.find("kvpr ") {
                    let after = &rest[i + 5..];
                    rest = after;
                    let sub: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase())
                        .collect();
                    if !subs.contains(&sub) {
                        continue;
                    }
                    let end = after
                        .find(['`', '|', ';', '&', '>', '#', '<', ')'])
                        .unwrap_or(after.len());
                    let flags = after[..end]
                        .split_whitespace()
                        .filter(|t| t.starts_with("--"))
                        .map(|t| {
                            let t = t.split('=').next().unwrap_or(t);
                            t.trim_end_matches([',', '.', ':', '"', '\'']).to_string()
                        })
                        .collect();
                    out.push((name.clone(), sub, flags));
                }
            }
        }
        out
    }

    /// Issue 19, finding 13: the docs name no flag a command does not have.
    #[test]
    fn every_flag_the_docs_name_exists() {
        let cmds = doc_commands();
        assert!(
            cmds.len() > 30,
            "found only {} commands in the docs",
            cmds.len()
        );
        let cli = command();
        let mut bad = Vec::new();
        for (file, sub, flags) in &cmds {
            let sc = cli.find_subcommand(sub).unwrap();
            let known: Vec<String> = sc
                .get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                .chain(["--help".to_string(), "--version".to_string()])
                .collect();
            for f in flags {
                if !known.contains(f) {
                    bad.push(format!("{file}: kvpr {sub} {f}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "flags the docs name that do not exist:\n{}",
            bad.join("\n")
        );
    }
}

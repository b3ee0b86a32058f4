//! `vdisk manpage`: the manual page, as roff: clap_mangen's page of the command, then a
//! section per subcommand (its synopsis, description, options and examples).

use clap::CommandFactory;
use vdisk::Result;

use super::{stdout_error, Ctx, Status};

/// Print the manual page (roff)
///
/// For example: `vdisk manpage > /usr/local/share/man/man1/vdisk.1`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_ctx: &Ctx, _a: Args) -> Result<Status> {
    let mut cmd = crate::Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    let sections = [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ];
    for render in sections {
        render(&man, &mut out).map_err(stdout_error)?;
    }
    let mut page = String::from_utf8_lossy(&out).into_owned();
    page.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        commands(&mut page, sub, "vdisk");
    }
    page.push_str(TAIL);
    let mut out = Vec::new();
    man.render_version_section(&mut out).map_err(stdout_error)?;
    page.push_str(&String::from_utf8_lossy(&out));
    // roff input is ASCII: other characters as groff's Unicode escapes.
    let page: String = page
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\[u{:04X}]", u32::from(c))
            }
        })
        .collect();
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(page.as_bytes()).map_err(stdout_error)?;
    stdout.flush().map_err(stdout_error)?;
    Ok(0)
}

/// What every command shares: exit status and environment.
const TAIL: &str = r#".SH "EXIT STATUS"
.TP
0
Success (diff: identical; check and verify: clean).
.TP
1
Differences or problems found.
.TP
2
An error; one line on stderr, \fBvdisk: error: PATH: what went wrong\fR.
.TP
130
Interrupted by SIGINT or SIGTERM; the repository or output is as it was.
.SH ENVIRONMENT
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_REGION\fR, \fBAWS_ENDPOINT_URL\fR, \fBAWS_ALLOW_HTTP\fR
The object store of an \fBs3://BUCKET/PREFIX\fR repository.
"#;

/// The section of `cmd` (and of its own subcommands), under `parent`.
fn commands(page: &mut String, cmd: &clap::Command, parent: &str) {
    let name = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            commands(page, sub, &name);
        }
        return;
    }
    page.push_str(&format!(".SS \"{}\"\n", escape(&name)));
    let usage = cmd.clone().bin_name(&name).render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    page.push_str(&format!(".B {}\n.PP\n", escape(usage)));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        for para in about.to_string().split("\n\n") {
            page.push_str(&format!("{}\n.PP\n", escape(&para.replace('\n', " "))));
        }
    }
    for arg in cmd.get_arguments() {
        if arg.is_global_set() || arg.is_hide_set() || arg.get_id() == "help" {
            continue;
        }
        let mut head = Vec::new();
        if let Some(s) = arg.get_short() {
            head.push(format!("-{s}"));
        }
        if let Some(l) = arg.get_long() {
            head.push(format!("--{l}"));
        }
        let value = arg.get_value_names().map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        let head = match (head.is_empty(), value) {
            (true, Some(v)) => v,
            (true, None) => arg.get_id().to_string().to_uppercase(),
            (false, Some(v)) if arg.get_action().takes_values() => {
                format!("{} {v}", head.join(", "))
            }
            (false, _) => head.join(", "),
        };
        page.push_str(&format!(".TP\n\\fB{}\\fR\n", escape(&head)));
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            page.push_str(&format!(
                "{}\n",
                escape(&help.to_string().replace('\n', " "))
            ));
        }
    }
    if let Some(after) = cmd.get_after_help() {
        page.push_str(".PP\n.nf\n");
        for line in after.to_string().lines() {
            page.push_str(&format!("{}\n", escape(line)));
        }
        page.push_str(".fi\n");
    }
}

/// `text` as roff text: backslashes and hyphens escaped, and no line starting as a request.
fn escape(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

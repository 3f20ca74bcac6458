//! report: `log(map)` appends a step to metrics.jsonl and moves the progress bar;
//! `progress(total)` starts one; `summary(map)` adds to summary.json; `table(rows)` prints.

use super::api_tensor::numbers;
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::values::map_to_json;
use crate::report::plot::{self, Labels, Series};
use crate::report::{stats, table};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use rhai::{Array, Dynamic, Map};
use serde_json::Value;
use std::path::Path;
use std::rc::Rc;

fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Draws `<name>.svg` in the run directory with `draw`, given the options title, x and y (the
/// axis titles); returns its path.
fn svg(
    run: &Run,
    what: &'static str,
    name: &str,
    opts: &Map,
    draw: impl FnOnce(&std::path::Path, &Labels) -> anyhow::Result<()>,
) -> Res<String> {
    let o = Opts::new(what, opts);
    let (title, x, y) = (
        o.string("title", name)?,
        o.string("x", "")?,
        o.string("y", "")?,
    );
    o.finish()?;
    let path = run.output(&format!("{name}.svg")).map_err(fail(what))?;
    draw(
        &path,
        &Labels {
            title: &title,
            x: &x,
            y: &y,
        },
    )
    .map_err(fail(what))?;
    Ok(path.display().to_string())
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    let r = run.clone();
    api.func(
        "log",
        "(metrics: Map) -> ()",
        "Appends one step to metrics.jsonl (TRL names: loss, rewards/margins, ...; online/annotations is added) and advances the progress bar.",
        move |m: Map| -> Res<()> {
            let mut record = map_to_json(&m);
            let count = r.annotations.get();
            if count > 0 {
                record.insert("online/annotations".into(), count.into());
            }
            let mut rep = r.report().map_err(fail("log"))?;
            rep.log(record).map_err(fail("log"))
        },
    );
    let r = run.clone();
    api.func(
        "progress",
        "(total: int, label: String) -> ()",
        "Shows a progress bar over the next `total` log calls.",
        move |total: i64, label: &str| -> Res<()> {
            r.report()
                .map_err(fail("progress"))?
                .progress(total.max(0) as u64, label);
            Ok(())
        },
    );
    let r = run.clone();
    api.func(
        "summary",
        "(values: Map) -> ()",
        "Adds values to summary.json (written when the run ends).",
        move |m: Map| -> Res<()> {
            r.report()
                .map_err(fail("summary"))?
                .set_summary(map_to_json(&m));
            Ok(())
        },
    );
    let r = run.clone();
    api.func(
        "table",
        "(rows: Array) -> String",
        "Prints maps as a table (one row each, columns from the first) and returns it.",
        move |rows: Array| -> String {
            let rows: Vec<serde_json::Map<String, Value>> = rows
                .iter()
                .filter_map(|v| v.read_lock::<Map>().map(|m| map_to_json(&m)))
                .collect();
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            if let Some(first) = rows.first() {
                let cols: Vec<String> = first.keys().cloned().collect();
                table.set_header(cols.clone());
                for row in &rows {
                    table.add_row(
                        cols.iter()
                            .map(|c| row.get(c).map(cell).unwrap_or_default()),
                    );
                }
            }
            let text = table.to_string();
            r.print(&text);
            text
        },
    );
    let r = run.clone();
    api.func(
        "save_table",
        "(rows: Array, columns: Array, name: String) -> String",
        "Writes rows (maps) as <name>.csv and <name>.md in the run directory, with these columns in this order; returns the Markdown.",
        move |rows: Array, columns: Array, name: &str| -> Res<String> {
            let cols: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let rows: Vec<_> = rows
                .iter()
                .map(|v| {
                    v.read_lock::<Map>()
                        .map(|m| map_to_json(&m))
                        .ok_or_else(|| error(format!("save_table: rows must be maps, got {v}")))
                })
                .collect::<Res<_>>()?;
            let csv = r.output(&format!("{name}.csv")).map_err(fail("save_table"))?;
            let dir = csv.parent().map(Path::to_path_buf).unwrap_or_default();
            let stem = csv.file_stem().map(|s| s.to_string_lossy().to_string());
            let (_, md) = table::write(&dir, &stem.unwrap_or_default(), &cols, &rows)
                .map_err(fail("save_table"))?;
            std::fs::read_to_string(&md).map_err(|e| fail("save_table")(e.into()))
        },
    );
    let r = run.clone();
    api.func(
        "line_plot",
        "(name: String, series: Map, options: Map) -> String",
        "Draws <name>.svg in the run directory: one line per series (label -> array of [x, y]); options title, x, y (axis titles). Returns the path.",
        move |name: &str, series: Map, opts: Map| -> Res<String> {
            let series = series
                .iter()
                .map(|(label, v)| {
                    let points = v
                        .read_lock::<Array>()
                        .ok_or_else(|| error(format!("line_plot: series `{label}` must be an array of [x, y]")))?
                        .iter()
                        .map(|p| match numbers(p, "line_plot point")?.as_slice() {
                            [a, b] => Ok((*a, *b)),
                            _ => Err(error(format!("line_plot: series `{label}`: {p} is not [x, y]"))),
                        })
                        .collect::<Res<Vec<_>>>()?;
                    Ok(Series { label: label.to_string(), points })
                })
                .collect::<Res<Vec<_>>>()?;
            svg(&r, "line_plot", name, &opts, |path, labels| plot::line_chart(path, labels, &series))
        },
    );
    let r = run.clone();
    api.func(
        "box_plot",
        "(name: String, groups: Array, options: Map) -> String",
        "Draws <name>.svg in the run directory: one box per group (#{ label, values }), in order; options title, x, y. Returns the path.",
        move |name: &str, groups: Array, opts: Map| -> Res<String> {
            let groups = groups
                .iter()
                .map(|g| {
                    let m = g
                        .read_lock::<Map>()
                        .ok_or_else(|| error(format!("box_plot: a group must be #{{ label, values }}, got {g}")))?;
                    let label = m.get("label").map(|l| l.to_string()).unwrap_or_default();
                    let values = m
                        .get("values")
                        .ok_or_else(|| error(format!("box_plot: group `{label}` has no values")))?;
                    Ok((label, numbers(values, "box_plot values")?))
                })
                .collect::<Res<Vec<_>>>()?;
            svg(&r, "box_plot", name, &opts, |path, labels| plot::box_chart(path, labels, &groups))
        },
    );
    api.func(
        "mean_ci",
        "(values: Array) -> Map",
        "#{ mean, ci, n }: the mean and the half-width of its 95% Student-t confidence interval (at least 2 values).",
        |xs: Dynamic| -> Res<Map> {
            let xs = numbers(&xs, "mean_ci values")?;
            let (mean, ci) = stats::mean_ci(&xs, 0.95).map_err(fail("mean_ci"))?;
            Ok(Map::from_iter([
                ("mean".into(), mean.into()),
                ("ci".into(), ci.into()),
                ("n".into(), (xs.len() as i64).into()),
            ]))
        },
    );
    api.func(
        "welch_t_test",
        "(a: Array, b: Array) -> Map",
        "#{ t, df, p }: Welch's t-test of mean(a) = mean(b) (unequal variances), p two-sided.",
        |a: Dynamic, b: Dynamic| -> Res<Map> {
            let a = numbers(&a, "welch_t_test a")?;
            let b = numbers(&b, "welch_t_test b")?;
            let (t, df, p) = stats::welch(&a, &b).map_err(fail("welch_t_test"))?;
            Ok(Map::from_iter([
                ("t".into(), t.into()),
                ("df".into(), df.into()),
                ("p".into(), p.into()),
            ]))
        },
    );
}

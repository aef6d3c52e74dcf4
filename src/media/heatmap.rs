//! Heatmaps of attention statistics: one panel per attention kind, sites down, denoising steps
//! across, a viridis colour scale with its own labelled bar.
//!
//! The input is a plain table so this module stays independent of where the statistics come
//! from; [`HeatmapInput::from_cells`] builds it from (kind, site, step, value) tuples.

use std::collections::HashMap;

use super::canvas::{Canvas, Rgb, BLACK, MAX_CANVAS_PIXELS, WHITE};
use super::colormap::viridis;
use super::font::{text_width, GLYPH_HEIGHT, LINE_HEIGHT};
use super::image::encode_png_rgb;
use super::MediaError;

/// What to draw: the panels, top to bottom.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeatmapInput {
    /// One panel per attention kind (spatial, cross, temporal, ...).
    pub kinds: Vec<Panel>,
}

/// One panel: a `rows.len()` × `steps` grid of values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// Panel heading, e.g. the attention kind.
    pub title: String,
    /// Row labels, e.g. site ids, top to bottom.
    pub rows: Vec<String>,
    /// Number of columns (denoising steps).
    pub steps: usize,
    /// `rows.len() * steps` values, row-major. NaN or infinite values are drawn as missing.
    pub values: Vec<f64>,
}

/// One statistic of one site at one step, for [`HeatmapInput::from_cells`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapCell {
    pub kind: String,
    pub site: String,
    pub step: usize,
    pub value: f64,
}

/// Presentation settings; `Default` gives readable output for typical runs.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapStyle {
    /// Heading above all panels.
    pub title: Option<String>,
    /// One colour scale shared by every panel (low, high); `None` scales each panel to its own
    /// finite minimum and maximum.
    pub value_range: Option<(f64, f64)>,
    /// Width of a step's column in pixels; `None` picks one from the number of steps.
    pub cell_width: Option<usize>,
    /// Height of a site's row in pixels (at least the 8 px a label needs).
    pub cell_height: usize,
    /// Longer row labels keep their end, prefixed with "..".
    pub max_label_chars: usize,
    /// Header of the row labels.
    pub row_axis: String,
    /// Title of the column axis.
    pub column_axis: String,
}

impl Default for HeatmapStyle {
    fn default() -> Self {
        HeatmapStyle {
            title: None,
            value_range: None,
            cell_width: None,
            cell_height: 10,
            max_label_chars: 64,
            row_axis: "site".to_string(),
            column_axis: "step".to_string(),
        }
    }
}

/// Kinds in the order the API documents them; other kinds follow in order of appearance.
const KIND_ORDER: [&str; 3] = ["spatial", "cross", "temporal"];

impl HeatmapInput {
    /// Groups cells into one panel per kind. Sites keep their order of first appearance, the
    /// step axis runs from 0 to the largest step seen, cells never given stay missing, and
    /// several values for one cell (e.g. per-head records) are averaged. Filter the cells to a
    /// single run and statistic before calling. Fails when a panel would exceed the largest
    /// renderable image.
    pub fn from_cells(cells: impl IntoIterator<Item = HeatmapCell>) -> Result<Self, MediaError> {
        struct Accumulator {
            sites: Vec<String>,
            site_index: HashMap<String, usize>,
            sums: HashMap<(usize, usize), (f64, usize)>,
            steps: usize,
        }
        let mut kinds: Vec<(String, Accumulator)> = Vec::new();
        for cell in cells {
            let position = match kinds.iter().position(|(kind, _)| *kind == cell.kind) {
                Some(position) => position,
                None => {
                    kinds.push((
                        cell.kind.clone(),
                        Accumulator {
                            sites: Vec::new(),
                            site_index: HashMap::new(),
                            sums: HashMap::new(),
                            steps: 0,
                        },
                    ));
                    kinds.len() - 1
                }
            };
            let accumulator = &mut kinds[position].1;
            let row = match accumulator.site_index.get(&cell.site) {
                Some(&row) => row,
                None => {
                    accumulator.sites.push(cell.site.clone());
                    accumulator
                        .site_index
                        .insert(cell.site, accumulator.sites.len() - 1);
                    accumulator.sites.len() - 1
                }
            };
            accumulator.steps = accumulator.steps.max(cell.step.saturating_add(1));
            let entry = accumulator.sums.entry((row, cell.step)).or_insert((0.0, 0));
            entry.0 += cell.value;
            entry.1 += 1;
        }
        let rank = |kind: &str| {
            KIND_ORDER
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(KIND_ORDER.len())
        };
        // Stable sort: unknown kinds keep their order of appearance.
        kinds.sort_by_key(|(kind, _)| rank(kind));

        let panels = kinds
            .into_iter()
            .map(|(kind, accumulator)| {
                let steps = accumulator.steps;
                let cells = accumulator
                    .sites
                    .len()
                    .checked_mul(steps)
                    .filter(|&cells| cells <= MAX_CANVAS_PIXELS)
                    .ok_or_else(|| {
                        MediaError::InvalidInput(format!(
                            "{kind} panel of {} sites x {steps} steps is too large",
                            accumulator.sites.len()
                        ))
                    })?;
                let mut values = vec![f64::NAN; cells];
                for ((row, step), (sum, count)) in accumulator.sums {
                    values[row * steps + step] = sum / count as f64;
                }
                Ok(Panel {
                    title: kind,
                    rows: accumulator.sites,
                    steps,
                    values,
                })
            })
            .collect::<Result<_, MediaError>>()?;
        Ok(HeatmapInput { kinds: panels })
    }
}

const MARGIN: usize = 10;
const TITLE_SCALE: usize = 2;
const TITLE_GAP: usize = 6;
const PANEL_GAP: usize = 16;
const LABEL_GAP: usize = 6;
const BAR_GAP: usize = 12;
const BAR_WIDTH: usize = 14;
const BAR_LABEL_GAP: usize = 4;
const TICK_LENGTH: usize = 3;
const MISSING: Rgb = [160, 160, 160];
const AXIS_TEXT: Rgb = [40, 40, 40];

/// Renders the heatmap as PNG bytes.
pub fn render_heatmap(input: &HeatmapInput, style: &HeatmapStyle) -> Result<Vec<u8>, MediaError> {
    if input.kinds.is_empty() {
        return Err(MediaError::InvalidInput("heatmap has no panels".into()));
    }
    if let Some((low, high)) = style.value_range {
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(MediaError::InvalidInput(format!(
                "heatmap value range ({low}, {high}) must be finite and increasing"
            )));
        }
    }
    if style.cell_height < GLYPH_HEIGHT {
        return Err(MediaError::InvalidInput(format!(
            "heatmap cell height {} is below the {GLYPH_HEIGHT} px a label needs",
            style.cell_height
        )));
    }
    let layouts = input
        .kinds
        .iter()
        .map(|panel| PanelLayout::measure(panel, style))
        .collect::<Result<Vec<_>, _>>()?;

    let title_height = match &style.title {
        Some(_) => LINE_HEIGHT * TITLE_SCALE + TITLE_GAP,
        None => 0,
    };
    let title_width = style
        .title
        .as_deref()
        .map_or(0, |title| text_width(title, TITLE_SCALE));
    let content_width = layouts
        .iter()
        .map(|layout| layout.width)
        .max()
        .unwrap_or(0)
        .max(title_width);
    let content_height = title_height
        + layouts.iter().map(|layout| layout.height).sum::<usize>()
        + PANEL_GAP * (layouts.len() - 1);

    let mut canvas = Canvas::new(
        content_width + 2 * MARGIN,
        content_height + 2 * MARGIN,
        WHITE,
    )?;
    if let Some(title) = &style.title {
        canvas.draw_text(MARGIN, MARGIN, title, BLACK, TITLE_SCALE);
    }
    let mut top = MARGIN + title_height;
    for (panel, layout) in input.kinds.iter().zip(&layouts) {
        layout.draw(&mut canvas, MARGIN, top, panel, style);
        top += layout.height + PANEL_GAP;
    }
    encode_png_rgb(canvas.width(), canvas.height(), canvas.pixels())
}

/// Sizes of one panel's parts, measured once and then used to draw it.
struct PanelLayout {
    labels: Vec<String>,
    label_width: usize,
    cell_width: usize,
    grid_width: usize,
    grid_height: usize,
    body_height: usize,
    tick_every: usize,
    bar_labels: [String; 3],
    width: usize,
    height: usize,
}

impl PanelLayout {
    fn measure(panel: &Panel, style: &HeatmapStyle) -> Result<Self, MediaError> {
        let expected = panel.rows.len().checked_mul(panel.steps).ok_or_else(|| {
            MediaError::InvalidInput(format!("panel {:?} is too large", panel.title))
        })?;
        if panel.values.len() != expected {
            return Err(MediaError::InvalidInput(format!(
                "panel {:?}: {} rows x {} steps needs {expected} values, got {}",
                panel.title,
                panel.rows.len(),
                panel.steps,
                panel.values.len()
            )));
        }
        let labels: Vec<String> = panel
            .rows
            .iter()
            .map(|label| shorten_label(label, style.max_label_chars))
            .collect();
        let label_width = labels
            .iter()
            .map(|label| text_width(label, 1))
            .chain([text_width(&style.row_axis, 1)])
            .max()
            .unwrap_or(0)
            + LABEL_GAP;
        let cell_width = style
            .cell_width
            .unwrap_or_else(|| (600 / panel.steps.max(1)).clamp(2, 24))
            .max(1);
        let grid_width = cell_width.saturating_mul(panel.steps);
        let grid_height = style.cell_height.saturating_mul(panel.rows.len());
        let body_height = grid_height.max(3 * LINE_HEIGHT);

        let (low, high) = color_range(panel, style);
        let span = high - low;
        let bar_labels = [
            format_value(high, span),
            format_value(low + span / 2.0, span),
            format_value(low, span),
        ];
        let bar_label_width = bar_labels
            .iter()
            .map(|label| text_width(label, 1))
            .max()
            .unwrap_or(0);

        let widest_step_label = text_width(&panel.steps.saturating_sub(1).to_string(), 1);
        let tick_every = tick_interval(widest_step_label + 4, cell_width);

        let body_width =
            label_width + grid_width + BAR_GAP + BAR_WIDTH + BAR_LABEL_GAP + bar_label_width;
        let width = body_width.max(text_width(&panel.title, TITLE_SCALE));
        // Title, "site" header, body, ticks, tick labels, "step" axis title.
        let height = LINE_HEIGHT * TITLE_SCALE
            + TITLE_GAP
            + LINE_HEIGHT
            + body_height
            + TICK_LENGTH
            + 2
            + 2 * LINE_HEIGHT;
        Ok(PanelLayout {
            labels,
            label_width,
            cell_width,
            grid_width,
            grid_height,
            body_height,
            tick_every,
            bar_labels,
            width,
            height,
        })
    }

    fn draw(
        &self,
        canvas: &mut Canvas,
        left: usize,
        top: usize,
        panel: &Panel,
        style: &HeatmapStyle,
    ) {
        canvas.draw_text(left, top, &panel.title, BLACK, TITLE_SCALE);
        let header_top = top + LINE_HEIGHT * TITLE_SCALE + TITLE_GAP;
        canvas.draw_text(left, header_top, &style.row_axis, AXIS_TEXT, 1);
        let grid_left = left + self.label_width;
        let grid_top = header_top + LINE_HEIGHT;

        if panel.rows.is_empty() || panel.steps == 0 {
            canvas.draw_text(grid_left, grid_top, "no data", AXIS_TEXT, 1);
            return;
        }

        let (low, high) = color_range(panel, style);
        for (row, label) in self.labels.iter().enumerate() {
            let row_top = grid_top + row * style.cell_height;
            canvas.draw_text(
                left,
                row_top + (style.cell_height - GLYPH_HEIGHT) / 2,
                label,
                BLACK,
                1,
            );
            for step in 0..panel.steps {
                let value = panel.values[row * panel.steps + step];
                let color = if value.is_finite() {
                    viridis(normalize(value, low, high))
                } else {
                    MISSING
                };
                canvas.fill_rect(
                    grid_left + step * self.cell_width,
                    row_top,
                    self.cell_width,
                    style.cell_height,
                    color,
                );
            }
        }

        // Step axis: ticks under the grid, labels centred on their column, then the axis title.
        let axis_top = grid_top + self.body_height;
        for step in (0..panel.steps).step_by(self.tick_every) {
            let center = grid_left + step * self.cell_width + self.cell_width / 2;
            canvas.fill_rect(center, axis_top, 1, TICK_LENGTH, AXIS_TEXT);
            let label = step.to_string();
            let label_left = center
                .saturating_sub(text_width(&label, 1) / 2)
                .max(grid_left);
            canvas.draw_text(label_left, axis_top + TICK_LENGTH + 2, &label, AXIS_TEXT, 1);
        }
        let axis_title_left =
            grid_left + self.grid_width.saturating_sub(text_width(&style.column_axis, 1)) / 2;
        canvas.draw_text(
            axis_title_left,
            axis_top + TICK_LENGTH + 2 + LINE_HEIGHT,
            &style.column_axis,
            AXIS_TEXT,
            1,
        );

        // Colour bar: high at the top, labelled at top, middle and bottom.
        let bar_left = grid_left + self.grid_width + BAR_GAP;
        let bar_height = self.body_height;
        for y in 0..bar_height {
            let t = 1.0 - y as f64 / (bar_height - 1).max(1) as f64;
            canvas.fill_rect(bar_left, grid_top + y, BAR_WIDTH, 1, viridis(t));
        }
        let label_left = bar_left + BAR_WIDTH + BAR_LABEL_GAP;
        let label_tops = [
            grid_top,
            grid_top + (bar_height - LINE_HEIGHT) / 2,
            grid_top + bar_height - LINE_HEIGHT + 1,
        ];
        for (label, label_top) in self.bar_labels.iter().zip(label_tops) {
            canvas.draw_text(label_left, label_top, label, AXIS_TEXT, 1);
        }
        debug_assert!(self.grid_height <= self.body_height);
    }
}

/// The values mapped to the ends of the colour scale for `panel`.
fn color_range(panel: &Panel, style: &HeatmapStyle) -> (f64, f64) {
    if let Some(range) = style.value_range {
        return range;
    }
    let finite = panel.values.iter().copied().filter(|v| v.is_finite());
    let (low, high) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
        (low.min(v), high.max(v))
    });
    if low > high {
        (0.0, 1.0) // no finite values at all
    } else {
        (low, high)
    }
}

/// Position of `value` on the colour scale; a constant panel sits in the middle.
fn normalize(value: f64, low: f64, high: f64) -> f64 {
    if high > low {
        (value - low) / (high - low)
    } else {
        0.5
    }
}

/// The smallest of 1, 2, 5, 10, 20, 50, ... steps whose columns are at least `min_pixels` wide,
/// so step labels never overlap.
fn tick_interval(min_pixels: usize, cell_width: usize) -> usize {
    let mut magnitude = 1usize;
    loop {
        for multiple in [1, 2, 5] {
            let interval = magnitude.saturating_mul(multiple);
            if interval.saturating_mul(cell_width) >= min_pixels || interval == usize::MAX {
                return interval;
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

fn shorten_label(label: &str, max_chars: usize) -> String {
    let count = label.chars().count();
    if count <= max_chars || max_chars < 3 {
        return label.to_string();
    }
    let tail: String = label.chars().skip(count - (max_chars - 2)).collect();
    format!("..{tail}")
}

/// Colour-bar label for `value` on a scale spanning `span`: enough decimals to tell the labels
/// apart, scientific notation for very large or very small scales, and no "-0".
fn format_value(value: f64, span: f64) -> String {
    let magnitude = value.abs().max(span.abs());
    if magnitude == 0.0 {
        return "0".to_string();
    }
    if !(0.01..10_000.0).contains(&magnitude) {
        return format!("{value:.2e}");
    }
    let decimals = if span > 0.0 {
        (2 - span.log10().floor() as i64).clamp(0, 4) as usize
    } else {
        3
    };
    let text = format!("{value:.decimals$}");
    match text.strip_prefix('-') {
        Some(unsigned) if unsigned.chars().all(|c| c == '0' || c == '.') => unsigned.to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::image::decode_png_rgb;

    fn panel(title: &str, rows: usize, steps: usize) -> Panel {
        Panel {
            title: title.to_string(),
            rows: (0..rows)
                .map(|r| format!("down_blocks.{r}.attentions.0.attn1"))
                .collect(),
            steps,
            values: (0..rows * steps)
                .map(|i| i as f64 / (rows * steps) as f64)
                .collect(),
        }
    }

    fn three_kinds() -> HeatmapInput {
        HeatmapInput {
            kinds: vec![
                panel("spatial", 4, 25),
                panel("cross", 3, 25),
                panel("temporal", 5, 25),
            ],
        }
    }

    #[test]
    fn heatmap_decodes_with_the_laid_out_size() {
        let input = three_kinds();
        let style = HeatmapStyle::default();
        let png = render_heatmap(&input, &style).unwrap();
        let (width, height, rgb) = decode_png_rgb(&png);

        let layouts: Vec<_> = input
            .kinds
            .iter()
            .map(|p| PanelLayout::measure(p, &style).unwrap())
            .collect();
        let expected_width = layouts.iter().map(|l| l.width).max().unwrap() + 2 * MARGIN;
        let expected_height =
            layouts.iter().map(|l| l.height).sum::<usize>() + 2 * PANEL_GAP + 2 * MARGIN;
        assert_eq!((width, height), (expected_width, expected_height));
        assert_eq!(rgb.len(), width * height * 3);
        // 25 steps -> 24 px columns, 4 rows of 10 px in the first panel.
        assert_eq!(layouts[0].cell_width, 24);
        assert_eq!(layouts[0].grid_width, 600);
        assert_eq!(layouts[0].grid_height, 40);
    }

    #[test]
    fn cells_use_the_colour_scale_from_low_to_high() {
        let input = HeatmapInput {
            kinds: vec![Panel {
                title: "spatial".into(),
                rows: vec!["a".into(), "b".into()],
                steps: 2,
                values: vec![1.0, 2.0, f64::NAN, 3.0],
            }],
        };
        let style = HeatmapStyle {
            cell_width: Some(10),
            ..HeatmapStyle::default()
        };
        let png = render_heatmap(&input, &style).unwrap();
        let (width, _, rgb) = decode_png_rgb(&png);
        let layout = PanelLayout::measure(&input.kinds[0], &style).unwrap();
        let grid_left = MARGIN + layout.label_width;
        let grid_top = MARGIN + LINE_HEIGHT * TITLE_SCALE + TITLE_GAP + LINE_HEIGHT;
        let pixel = |x: usize, y: usize| -> Rgb {
            let offset = (y * width + x) * 3;
            [rgb[offset], rgb[offset + 1], rgb[offset + 2]]
        };
        let cell = |row: usize, step: usize| {
            pixel(
                grid_left + step * 10 + 5,
                grid_top + row * style.cell_height + 4,
            )
        };
        assert_eq!(cell(0, 0), viridis(0.0));
        assert_eq!(cell(0, 1), viridis(0.5));
        assert_eq!(cell(1, 0), MISSING);
        assert_eq!(cell(1, 1), viridis(1.0));
    }

    #[test]
    fn mismatched_values_are_an_error_not_a_panic() {
        let mut input = three_kinds();
        input.kinds[1].values.pop();
        assert!(matches!(
            render_heatmap(&input, &HeatmapStyle::default()),
            Err(MediaError::InvalidInput(_))
        ));
        assert!(render_heatmap(&HeatmapInput::default(), &HeatmapStyle::default()).is_err());
        let bad_range = HeatmapStyle {
            value_range: Some((1.0, 1.0)),
            ..HeatmapStyle::default()
        };
        assert!(render_heatmap(&three_kinds(), &bad_range).is_err());
    }

    #[test]
    fn empty_and_constant_panels_render() {
        let input = HeatmapInput {
            kinds: vec![
                Panel {
                    title: "cross".into(),
                    ..Panel::default()
                },
                Panel {
                    title: "temporal".into(),
                    rows: vec!["t".into()],
                    steps: 1,
                    values: vec![0.25],
                },
            ],
        };
        let png = render_heatmap(&input, &HeatmapStyle::default()).unwrap();
        let (width, height, _) = decode_png_rgb(&png);
        assert!(width > 0 && height > 0);
    }

    #[test]
    fn from_cells_groups_by_kind_in_api_order_and_averages_duplicates() {
        let cell = |kind: &str, site: &str, step: usize, value: f64| HeatmapCell {
            kind: kind.into(),
            site: site.into(),
            step,
            value,
        };
        let input = HeatmapInput::from_cells([
            cell("temporal", "t0", 0, 1.0),
            cell("spatial", "s1", 1, 2.0),
            cell("spatial", "s0", 0, 3.0),
            cell("spatial", "s1", 1, 4.0),
        ])
        .unwrap();
        let titles: Vec<_> = input.kinds.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["spatial", "temporal"]);
        let spatial = &input.kinds[0];
        assert_eq!(spatial.rows, ["s1", "s0"]);
        assert_eq!(spatial.steps, 2);
        assert!(spatial.values[0].is_nan());
        assert_eq!(spatial.values[1], 3.0);
        assert_eq!(spatial.values[2], 3.0);
        assert!(spatial.values[3].is_nan());
        assert!(HeatmapInput::from_cells([cell("cross", "c", usize::MAX, 1.0)]).is_err());
    }

    #[test]
    fn ticks_are_spaced_so_labels_fit() {
        assert_eq!(tick_interval(15, 24), 1);
        assert_eq!(tick_interval(15, 6), 5);
        assert_eq!(tick_interval(21, 2), 20);
        assert_eq!(tick_interval(5, 0), usize::MAX);
    }

    #[test]
    fn labels_and_values_are_formatted_compactly() {
        assert_eq!(shorten_label("abcdef", 4), "..ef");
        assert_eq!(shorten_label("abc", 4), "abc");
        assert_eq!(format_value(0.5, 1.0), "0.50");
        assert_eq!(format_value(-0.0002, 2.0), "0.00");
        assert_eq!(format_value(0.4512, 0.05), "0.4512");
        assert_eq!(format_value(3.0, 0.0), "3.000");
        assert_eq!(format_value(0.0, 0.0), "0");
        assert_eq!(format_value(123456.0, 10.0), "1.23e5");
        assert_eq!(format_value(0.001, 0.002), "1.00e-3");
    }
}

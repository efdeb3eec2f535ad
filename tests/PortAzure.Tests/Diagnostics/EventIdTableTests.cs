using System.Reflection;
using System.Text.RegularExpressions;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Diagnostics;

/// <summary>
/// docs/deploy.md section 12 is where an operator looks up a log line: one row per event id, with its level. The ids
/// come from the three <c>EventIds</c> classes; the levels from the <c>[LoggerMessage]</c> declarations in the
/// sources (the attribute is not kept in the assemblies).
/// </summary>
public partial class EventIdTableTests
{
    private static readonly (string Project, Type Ids)[] IdClasses =
    [
        ("PortAzure.Ingress", typeof(PortAzure.Ingress.Diagnostics.EventIds)),
        ("PortAzure.Dispatcher", typeof(PortAzure.Dispatcher.Diagnostics.EventIds)),
        ("PortAzure.Shared", typeof(PortAzure.Diagnostics.SharedEventIds)),
    ];

    [Fact]
    public void DeployGuide_EveryEventId_HasOneRowAndNoRowIsStale()
    {
        var ids = IdClasses.SelectMany(c => Constants(c.Ids).Values).ToList();
        var rows = TableRows().Select(r => r.Id).ToList();

        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.Empty(ids.Except(rows));
        Assert.Empty(rows.Except(ids));
        Assert.Empty(rows.GroupBy(r => r).Where(g => g.Count() > 1).Select(g => g.Key));
    }

    [Fact]
    public void DeployGuide_EveryLogMessage_RowNamesItsLevel()
    {
        var levels = TableRows().ToDictionary(r => r.Id, r => r.Level);
        var declared = Declarations().ToList();

        // Every id is logged somewhere, and a row's level is the declared one (a level chosen per call reads "A / B",
        // unless the call sites write one level only).
        Assert.Empty(IdClasses.SelectMany(c => Constants(c.Ids).Values).Except(declared.Select(d => d.Id)));
        Assert.All(declared, d => Assert.True(d.Level is null
                ? levels[d.Id].Contains(" / ", StringComparison.Ordinal) || OneLevelPerCall.Contains(d.Id)
                : levels[d.Id] == d.Level,
            $"event {d.Id} is declared {d.Level ?? "with a level per call"}; docs/deploy.md says {levels[d.Id]}"));
    }

    // 1003: WebhookHandler.Reject passes Debug for the refusals it keeps at Debug, and writes no 1003 line for them.
    private static readonly int[] OneLevelPerCall = [1003];

    private static Dictionary<string, int> Constants(Type type) =>
        type.GetFields(BindingFlags.Public | BindingFlags.Static).Where(f => f.IsLiteral).ToDictionary(f => f.Name, f => (int)f.GetRawConstantValue()!);

    private static IEnumerable<(int Id, string Level)> TableRows()
    {
        var guide = File.ReadAllText(Path.Combine(Repository.Root, "docs", "deploy.md"));
        var start = guide.IndexOf("\n## 12.", StringComparison.Ordinal);
        Assert.True(start >= 0, "docs/deploy.md has no section 12 (log events)");
        var end = guide.IndexOf("\n## ", start + 1, StringComparison.Ordinal);
        var section = end < 0 ? guide[start..] : guide[start..end];
        return RowPattern().Matches(section).Select(m => (int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), m.Groups[2].Value.Trim()));
    }

    private static IEnumerable<(int Id, string? Level)> Declarations()
    {
        foreach (var (project, ids) in IdClasses)
        {
            var names = Constants(ids);
            var sources = Directory.EnumerateFiles(Path.Combine(Repository.Root, project), "*.cs", SearchOption.AllDirectories)
                .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                    && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal));
            foreach (Match m in sources.SelectMany(f => DeclarationPattern().Matches(File.ReadAllText(f))))
            {
                // Each project logs its own ids and the shared ones.
                var table = m.Groups[1].Value == nameof(PortAzure.Diagnostics.SharedEventIds) ? Constants(typeof(PortAzure.Diagnostics.SharedEventIds)) : names;
                Assert.True(table.TryGetValue(m.Groups[2].Value, out var id), $"{m.Value} names no constant of {project}");
                yield return (id, m.Groups[3].Success ? m.Groups[3].Value : null);
            }
        }
    }

    [GeneratedRegex(@"^\| (\d{4}) \| ([^|]+) \|", RegexOptions.Multiline)]
    private static partial Regex RowPattern();

    [GeneratedRegex(@"\[LoggerMessage\((?:EventId = )?(\w+)\.(\w+),\s*(?:LogLevel\.(\w+))?")]
    private static partial Regex DeclarationPattern();
}

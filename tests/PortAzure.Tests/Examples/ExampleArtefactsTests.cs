using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Routing.Template;
using PortAzure.Ingress;
using PortAzure.Ingress.Webhooks;
using PortAzure.Targets;
using PortAzure.Tests.Infrastructure;
using YamlDotNet.RepresentationModel;

namespace PortAzure.Tests.Examples;

/// <summary>
/// docs/examples holds a Port action, an Azure pipeline and a README that must agree with each other
/// and with the relay: the URL is the Ingress's route, the run id sits where the Ingress looks, and
/// every field the pipeline reads is in the body the action sends.
/// </summary>
public partial class ExampleArtefactsTests
{
    private const string RunIdTemplate = "{{ .run.id }}";

    private static readonly string ExamplesDirectory = Path.Combine(Repository.Root, "docs", "examples");

    [Fact]
    public void PortAction_Parse_IsAWebhookActionOnTheServiceBlueprint()
    {
        using var action = LoadPortAction();
        var root = action.RootElement;

        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("identifier").GetString()));
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("title").GetString()));
        var trigger = root.GetProperty("trigger");
        Assert.Equal("self-service", trigger.GetProperty("type").GetString());
        Assert.Equal("service", trigger.GetProperty("blueprintIdentifier").GetString());
        var inputs = trigger.GetProperty("userInputs").GetProperty("properties");
        Assert.Equal(JsonValueKind.Array, inputs.GetProperty("environment").GetProperty("enum").ValueKind);
        Assert.Equal("string", inputs.GetProperty("version").GetProperty("type").GetString());
        var invocation = root.GetProperty("invocationMethod");
        Assert.Equal("WEBHOOK", invocation.GetProperty("type").GetString());
        Assert.Equal("POST", invocation.GetProperty("method").GetString());
        Assert.False(invocation.GetProperty("agent").GetBoolean());
        Assert.False(invocation.GetProperty("synchronized").GetBoolean());
        Assert.Equal(JsonValueKind.Object, invocation.GetProperty("body").ValueKind);
    }

    [Fact]
    public void PortAction_Url_MatchesTheIngressRouteWithAValidTarget()
    {
        var (org, webhook) = ActionTarget();

        Assert.True(TargetNames.IsValidOrg(org), $"'{org}' is not a valid Azure DevOps organisation name.");
        Assert.True(TargetNames.IsValidWebhook(webhook), $"'{webhook}' is not a valid incoming webhook name.");
    }

    [Fact]
    public void PortAction_Body_PutsTheRunIdWhereTheIngressFindsIt()
    {
        using var action = LoadPortAction();

        var runId = RunIdExtractor.Find(Body(action));

        Assert.Equal(RunIdTemplate, runId);
    }

    [Fact]
    public void PortAction_BodyInputs_AreDeclaredUserInputs()
    {
        using var action = LoadPortAction();
        var declared = action.RootElement.GetProperty("trigger").GetProperty("userInputs").GetProperty("properties")
            .EnumerateObject().Select(p => p.Name).ToHashSet(StringComparer.Ordinal);

        var used = Strings(Body(action))
            .SelectMany(s => InputReference().Matches(s).Select(m => m.Groups["name"].Value))
            .ToList();

        Assert.NotEmpty(used);
        Assert.All(used, name => Assert.Contains(name, declared));
        Assert.All(declared, name => Assert.Contains(name, used));
    }

    [Fact]
    public void Pipeline_Parse_IsYamlWithOneWebhookResourceOnTheRelayConnection()
    {
        var pipeline = LoadPipeline();

        var webhook = Assert.Single(Webhooks(pipeline));
        Assert.Equal("portRun", Scalar(webhook, "webhook"));
        Assert.Equal("PortAzureRelay", Scalar(webhook, "connection"));
        Assert.Equal("none", Scalar(pipeline, "trigger"));
    }

    [Fact]
    public void Pipeline_ParameterReferences_UseTheWebhookAlias()
    {
        var pipeline = LoadPipeline();
        var alias = Scalar(Assert.Single(Webhooks(pipeline)), "webhook");

        var references = ParameterReferences(pipeline);

        Assert.NotEmpty(references);
        Assert.All(references, r => Assert.Equal(alias, r.Alias));
    }

    [Fact]
    public void Pipeline_ParameterReferences_ExistInTheBodyThePortActionSends()
    {
        using var action = LoadPortAction();
        var body = Body(action);

        var references = ParameterReferences(LoadPipeline());

        Assert.Contains(references, r => r.Path == "port_context.runId");
        Assert.Contains(references, r => r.Path == "properties.environment");
        Assert.All(references, r => Assert.True(TryWalk(body, r.Path, out _),
            $"${{{{ parameters.{r.Alias}.{r.Path} }}}} is not in port-action.json's body."));
    }

    [Fact]
    public void Pipeline_RunIdItReportsTo_IsTheRunIdTheIngressFinds()
    {
        using var action = LoadPortAction();
        var body = Body(action);
        var runIdReferences = ParameterReferences(LoadPipeline()).Where(r => r.EnvName == "PORT_RUN_ID").ToList();

        Assert.NotEmpty(runIdReferences);
        Assert.All(runIdReferences, r =>
        {
            Assert.True(TryWalk(body, r.Path, out var value));
            Assert.Equal(RunIdExtractor.Find(body), value.GetString());
        });
    }

    [Fact]
    public void Pipeline_Filters_MatchTheBodyThePortActionSends()
    {
        using var action = LoadPortAction();
        var body = Body(action);
        var identifier = action.RootElement.GetProperty("identifier").GetString()!;
        var filters = Sequence(Assert.Single(Webhooks(LoadPipeline())), "filters").OfType<YamlMappingNode>().ToList();

        Assert.NotEmpty(filters);
        Assert.All(filters, filter =>
        {
            var path = Scalar(filter, "path")!;
            Assert.True(TryWalk(body, path, out var template), $"Filter path '{path}' is not in port-action.json's body.");
            // The only template a filter may compare here is one whose value is known before the run.
            var produced = template.GetString() == "{{ .action.identifier }}" ? identifier : template.GetString();
            Assert.Equal(produced, Scalar(filter, "value"));
        });
    }

    [Fact]
    public void Pipeline_ReportStep_RunsAlwaysAndReportsTheJobStatusToPort()
    {
        var steps = Sequence(LoadPipeline(), "steps").OfType<YamlMappingNode>().ToList();

        var report = Assert.Single(steps, s => Scalar(s, "condition") == "always()");
        Assert.Same(steps[^1], report);
        var script = Scalar(report, "bash")!;
        Assert.Contains("/v1/auth/access_token", script, StringComparison.Ordinal);
        Assert.Contains("-X POST \"$PORT_API_URL/v1/actions/runs/$PORT_RUN_ID/logs\"", script, StringComparison.Ordinal);
        Assert.Contains("-X PATCH \"$PORT_API_URL/v1/actions/runs/$PORT_RUN_ID\"", script, StringComparison.Ordinal);
        var env = (YamlMappingNode)report.Children[new YamlScalarNode("env")];
        Assert.Equal("$(Agent.JobStatus)", Scalar(env, "JOB_STATUS"));
        Assert.Equal("$(PORT_CLIENT_SECRET)", Scalar(env, "PORT_CLIENT_SECRET"));
    }

    [Fact]
    public void Readme_ServiceConnection_NamesTheWebhookAndConnectionTheOtherFilesUse()
    {
        var readme = File.ReadAllText(Path.Combine(ExamplesDirectory, "README.md"));
        var (_, webhook) = ActionTarget();
        var connection = Scalar(Assert.Single(Webhooks(LoadPipeline())), "connection");

        Assert.Equal(webhook, FieldValue(readme, "WebHook Name"));
        Assert.Equal(connection, FieldValue(readme, "Service connection name"));
        Assert.Equal("X-Port-Signature", FieldValue(readme, "Headers"));
        Assert.Equal("deploy", webhook);
    }

    [Fact]
    public void ReportScript_Exists_AndCallsTheSamePortEndpoints()
    {
        var script = File.ReadAllText(Path.Combine(ExamplesDirectory, "report-to-port.sh"));

        Assert.StartsWith("#!/usr/bin/env bash", script, StringComparison.Ordinal);
        Assert.Contains("/v1/auth/access_token", script, StringComparison.Ordinal);
        Assert.Contains("/v1/actions/runs/$PORT_RUN_ID/logs", script, StringComparison.Ordinal);
        Assert.Contains("-X PATCH \"$api/v1/actions/runs/$PORT_RUN_ID\"", script, StringComparison.Ordinal);
    }

    // ---- helpers ----

    private static JsonDocument LoadPortAction() =>
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(ExamplesDirectory, "port-action.json")),
            new JsonDocumentOptions { AllowDuplicateProperties = false });

    private static JsonElement Body(JsonDocument action) => action.RootElement.GetProperty("invocationMethod").GetProperty("body");

    private static (string Org, string Webhook) ActionTarget()
    {
        using var action = LoadPortAction();
        var url = new Uri(action.RootElement.GetProperty("invocationMethod").GetProperty("url").GetString()!);
        Assert.Equal(Uri.UriSchemeHttps, url.Scheme);
        Assert.Empty(url.Query);
        var matcher = new TemplateMatcher(TemplateParser.Parse(IngressExtensions.WebhookRoute.TrimStart('/')), []);
        var values = new RouteValueDictionary();
        Assert.True(matcher.TryMatch(url.AbsolutePath, values), $"{url.AbsolutePath} does not match {IngressExtensions.WebhookRoute}.");
        return ((string)values["org"]!, (string)values["webhook"]!);
    }

    private static IEnumerable<string> Strings(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.Object => element.EnumerateObject().SelectMany(p => Strings(p.Value)),
        JsonValueKind.Array => element.EnumerateArray().SelectMany(Strings),
        JsonValueKind.String => [element.GetString()!],
        _ => [],
    };

    private static bool TryWalk(JsonElement root, string dottedPath, out JsonElement value)
    {
        value = root;
        foreach (var segment in dottedPath.Split('.'))
        {
            if (value.ValueKind != JsonValueKind.Object || !value.TryGetProperty(segment, out value))
            {
                return false;
            }
        }
        return true;
    }

    private static YamlMappingNode LoadPipeline()
    {
        using var reader = new StreamReader(Path.Combine(ExamplesDirectory, "azure-pipeline.yml"));
        var stream = new YamlStream();
        stream.Load(reader);
        return (YamlMappingNode)Assert.Single(stream.Documents).RootNode;
    }

    private static IEnumerable<YamlMappingNode> Webhooks(YamlMappingNode pipeline) =>
        Sequence((YamlMappingNode)pipeline.Children[new YamlScalarNode("resources")], "webhooks").OfType<YamlMappingNode>();

    private static YamlSequenceNode Sequence(YamlMappingNode node, string key) => (YamlSequenceNode)node.Children[new YamlScalarNode(key)];

    private static string? Scalar(YamlMappingNode node, string key) =>
        node.Children.TryGetValue(new YamlScalarNode(key), out var value) ? ((YamlScalarNode)value).Value : null;

    /// <summary>Every <c>${{ parameters.alias.path }}</c> in the pipeline's values (comments excluded), with the env name it feeds.</summary>
    private static List<ParameterReference> ParameterReferences(YamlNode node, string? key = null)
    {
        var found = new List<ParameterReference>();
        switch (node)
        {
            case YamlScalarNode { Value: { } text }:
                found.AddRange(ParameterExpression().Matches(text)
                    .Select(m => new ParameterReference(m.Groups["alias"].Value, m.Groups["path"].Value, key)));
                break;
            case YamlMappingNode mapping:
                foreach (var (k, v) in mapping.Children)
                {
                    found.AddRange(ParameterReferences(v, ((YamlScalarNode)k).Value));
                }
                break;
            case YamlSequenceNode sequence:
                foreach (var item in sequence.Children)
                {
                    found.AddRange(ParameterReferences(item));
                }
                break;
            default:
                break;
        }
        return found;
    }

    private static string FieldValue(string readme, string field) =>
        ReadmeField().Matches(readme).FirstOrDefault(m => m.Groups["field"].Value == field)?.Groups["value"].Value
        ?? throw new Xunit.Sdk.XunitException($"README.md names no **{field}**.");

    private sealed record ParameterReference(string Alias, string Path, string? EnvName);

    [GeneratedRegex(@"\$\{\{\s*parameters\.(?<alias>[A-Za-z_][A-Za-z0-9_]*)\.(?<path>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")]
    private static partial Regex ParameterExpression();

    [GeneratedRegex(@"\{\{\s*\.inputs\.(?<name>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}")]
    private static partial Regex InputReference();

    [GeneratedRegex(@"\*\*(?<field>[^*]+)\*\*: `(?<value>[^`]+)`")]
    private static partial Regex ReadmeField();
}

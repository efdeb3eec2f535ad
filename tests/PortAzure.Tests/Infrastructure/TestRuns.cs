using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using PortAzure.Signing;

namespace PortAzure.Tests.Infrastructure;

/// <summary>Port run bodies and signed webhook calls as Port makes them.</summary>
public static class TestRuns
{
    public const string Secret = "port-demo-secret";
    public const string Org = "contoso";
    public const string Webhook = "deploy";

    /// <summary>Planted in every test body's user properties: it must never show up in a log.</summary>
    public const string BodyMarker = "pz-body-marker-7f3a";

    public static byte[] SampleBody { get; } = File.ReadAllBytes(System.IO.Path.Combine(AppContext.BaseDirectory, "Data", "port-run-v1.sample.json"));

    /// <summary>A v1 run message like Port's, with <paramref name="runId"/> in context.runId.</summary>
    public static byte[] Body(string runId)
    {
        var node = JsonNode.Parse(SampleBody)!;
        node["context"]!["runId"] = runId;
        node["payload"]!["properties"]!["apiToken"] = BodyMarker;
        node["payload"]!["censoredProperties"] = new JsonArray("apiToken");
        return Encoding.UTF8.GetBytes(node.ToJsonString());
    }

    public static string NewRunId() => "r_" + Guid.NewGuid().ToString("N")[..16];

    public static string Path(string org = Org, string webhook = Webhook) =>
        $"{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version=6.0-preview";

    public static HttpRequestMessage Signed(byte[] body, string org = Org, string webhook = Webhook, string secret = Secret, DateTimeOffset? at = null)
    {
        var timestamp = (at ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        var request = new HttpRequestMessage(HttpMethod.Post, Path(org, webhook)) { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.TryAddWithoutValidation(PortSignature.TimestampHeader, timestamp);
        request.Headers.TryAddWithoutValidation(PortSignature.SignatureHeader, PortSignature.ComputeV1(secret, timestamp, body));
        return request;
    }

    /// <summary>A call signed with Port's legacy scheme: the hex HMAC-SHA1 of the body, no timestamp.</summary>
    public static HttpRequestMessage SignedLegacy(byte[] body, bool lowerCaseHex = false)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, Path()) { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        var mac = System.Security.Cryptography.HMACSHA1.HashData(Encoding.UTF8.GetBytes(Secret), body);
        request.Headers.TryAddWithoutValidation(PortSignature.SignatureHeader, lowerCaseHex ? Convert.ToHexStringLower(mac) : Convert.ToHexString(mac));
        return request;
    }

    public static async Task<HttpResponseMessage> SendAsync(HttpClient client, byte[] body, string org = Org, string webhook = Webhook)
    {
        using var request = Signed(body, org, webhook);
        return await client.SendAsync(request);
    }
}

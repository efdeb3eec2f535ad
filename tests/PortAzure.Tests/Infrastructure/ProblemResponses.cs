using System.Net.Http.Json;
using System.Text.Json;

namespace PortAzure.Tests.Infrastructure;

public static class ProblemResponses
{
    /// <summary>The <c>reason</c> of an RFC 7807 answer, which must be <c>application/problem+json</c>.</summary>
    public static async Task<string?> ReasonAsync(HttpResponseMessage response)
    {
        ArgumentNullException.ThrowIfNull(response);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("reason").GetString();
    }
}
